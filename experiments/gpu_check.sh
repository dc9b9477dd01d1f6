#!/usr/bin/env bash
# The GPU check on a fresh GPU machine that can download nothing: installs the wheels
# carried in .whl/ (ml_collections, tensorboardX: the packages such a machine lacks)
# into /tmp/site, the project itself without dependencies, then runs
# experiments/gpu_check.py. Usage, from the repository root:
#   bash experiments/gpu_check.sh OUT_DIR [gpu_check.py flags...]
set -euo pipefail
out=${1:?usage: bash experiments/gpu_check.sh OUT_DIR [flags]}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -m experiments.gpu_check --out="$out" "$@"
