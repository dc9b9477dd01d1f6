#!/usr/bin/env bash
# The GPU check on a fresh GPU machine that can download nothing. The packages such a
# machine lacks (ml_collections, tensorboardX) travel as wheels in .whl/, fetched
# beforehand on a machine with PyPI:
#   pip download --no-deps -d .whl ml_collections==1.1.0 tensorboardX==2.6.5
# This script installs them into a temporary folder, puts the project (without
# dependencies) on the path and runs experiments/gpu_check.py. Usage, from the
# repository root:
#   bash experiments/gpu_check.sh OUT_DIR [gpu_check.py flags...]
set -euo pipefail
out=${1:?usage: bash experiments/gpu_check.sh OUT_DIR [flags]}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" .whl/*.whl
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! missing=$(python3 - <<'PY'
import importlib.util
names = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "tensorboardX", "absl")
missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
print(" ".join(missing))
raise SystemExit(1 if missing else 0)
PY
); then
  echo "gpu_check.sh: this machine lacks: ${missing}. ml_collections and tensorboardX" \
       "travel as wheels in .whl/ (the top of this script says how); the others must be" \
       "installed" >&2
  exit 2
fi
python3 -m experiments.gpu_check --out="$out" "$@"
