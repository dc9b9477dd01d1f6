"""The GPU check: the benchmark's rows, XLA's peak memory and a real end-to-end run.

    bash experiments/gpu_check.sh OUT_DIR          # on a GPU machine, nothing downloaded
    python -m experiments.gpu_check --out=OUT_DIR  # the same, packages already installed

Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` (the machine, the
versions, one table per benchmark group, the end-to-end run's steps/s and the full
CIFAR-10 CNN-13 run's time computed from the measured step).

It is built for a short lease of a machine:

1. **compile**: every benchmark row is compiled at once, one process each, into a
   shared persistent compilation cache (`XLA_PYTHON_CLIENT_PREALLOCATE=false`, so the
   processes share the GPU's memory);
2. **time**: the groups then run one after another, alone on the device, loading their
   compiled steps from that cache, and the end-to-end run trains last.

Each part has its own time limit, and both files are rewritten after every part, so a
part that fails or runs out of time leaves the others' results.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from meta_semi_jax import benchmark

# (model, dtype) groups: each is one benchmark process. CNN-13 at CIFAR's batch and
# size (Appendix C), WRN-28-2 at CIFAR's 32x32 (MixMatch's batch).
GROUPS: dict[str, tuple[str, ...]] = {
    "cnn13": ("meta_semi:jvp", "meta_semi:unrolled", "ict", "supervised",
              "meta_semi:jvp*2", "meta_semi:jvp*5"),  # *K: K parallel runs (run_set)
    "wrn28_2": ("meta_semi:jvp", "ict"),
}
DTYPES = ("float32", "bfloat16")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

_OUT = flags.DEFINE_string("out", None, "Folder for gpu_check.json and gpu_check.md.",
                           required=True)
_MODELS = flags.DEFINE_list("models", list(GROUPS), "Models to time (small_cnn for a CPU "
                            "test: it takes CNN-13's rows).")
# --image_size, --steps and --warmup are the benchmark's own flags, passed on to it.
FLAGS = flags.FLAGS
_DTYPES = flags.DEFINE_list("dtypes", list(DTYPES), "Compute dtypes of the benchmark rows.")
_ROWS = flags.DEFINE_list("rows", None, "Benchmark rows (algorithm[:meta_grad]) of every "
                          "group instead of the model's GROUPS entry.")
_E2E_STEPS = flags.DEFINE_integer("e2e_steps", 300, "Steps of the end-to-end digits run "
                                  "(0: none).")
_LOGS = flags.DEFINE_string("logs", None, "Folder for each part's console output "
                            "(default: OUT/logs).")
_PART_TIMEOUT = flags.DEFINE_integer("part_timeout", 240, "Seconds each part may take.")


@dataclasses.dataclass(frozen=True)
class Group:
    model: str
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.model}_{self.dtype}"

    def rows(self) -> list[str]:
        algorithms = _ROWS.value or GROUPS.get(self.model, GROUPS["cnn13"])
        return [f"{a.partition('*')[0]}@{self.dtype}{''.join(a.partition('*')[1:])}"
                for a in algorithms]


def benchmark_argv(model: str, rows: Sequence[str], json_path: Path, steps: int,
                   warmup: int) -> list[str]:
    argv = [sys.executable, "-m", "meta_semi_jax.benchmark", f"--model={model}",
            f"--algorithms={','.join(rows)}", f"--steps={steps}",
            f"--warmup={warmup}", f"--json={json_path}"]
    if FLAGS.image_size:
        argv.append(f"--image_size={FLAGS.image_size}")
    return argv


def run_part(argv: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Runs one part with the time limit; its output goes to ``log``."""
    started = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=_PART_TIMEOUT.value).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"returncode": rc, "seconds": round(time.perf_counter() - started, 1)}


def machine() -> dict[str, Any]:
    """The device, the driver and the versions of the stack, read in a subprocess."""
    probe = ("import json, jax, flax, optax, orbax.checkpoint as o; d = jax.devices(); "
             "print(json.dumps({'device_kind': d[0].device_kind, 'device_count': len(d), "
             "'platform': d[0].platform, 'jax': jax.__version__, 'flax': flax.__version__, "
             "'optax': optax.__version__, 'orbax_checkpoint': o.__version__}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    info: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {
        "probe_error": out.stderr[-2000:]}
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True) \
        if shutil.which("nvidia-smi") else None
    info["nvidia_smi"] = smi.stdout.strip() if smi and smi.returncode == 0 else None
    info["python"] = platform.python_version()
    info["date"] = time.strftime("%Y-%m-%d")
    return info


def end_to_end_rate(metrics_jsonl: Path) -> dict[str, Any]:
    """Steps/s of a finished run between its first evaluation (whose time holds the
    compilations) and its last: (last step - first step) / (last wall time - first)."""
    lines = [json.loads(line) for line in metrics_jsonl.read_text().splitlines()]
    train = [m for m in lines if "wall_seconds" in m and "step" in m]
    first, last = train[0], train[-1]
    rate = (last["step"] - first["step"]) / (last["wall_seconds"] - first["wall_seconds"])
    return {"steps": last["step"], "wall_seconds": last["wall_seconds"],
            "steps_per_s_after_first_eval": rate,
            "last_metrics": {k: v for k, v in last.items() if isinstance(v, int | float)}}


def full_cifar10_hours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's CIFAR-10 CNN-13 run (configs/cifar10.py's steps) at each measured
    CNN-13 step time."""
    spec = importlib.util.spec_from_file_location("cifar10", CONFIGS / "cifar10.py")
    cifar10 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cifar10)
    steps = cifar10.get_config("4000").num_train_steps
    return [{"algorithm": r["algorithm"], "meta_grad": r["meta_grad"],
             "compute_dtype": r["compute_dtype"], "num_runs": r["num_runs"], "steps": steps,
             "hours": steps * r["ms_per_step"] / 1000 / 3600}  # of all num_runs together
            for r in rows if r["model"] == "cnn13" and r["algorithm"] != "supervised"]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# GPU check, {m.get('date')}", "",
             f"Device: {m.get('device_kind')} x {m.get('device_count')} "
             f"({m.get('nvidia_smi')}); jax {m.get('jax')}, flax {m.get('flax')}, "
             f"optax {m.get('optax')}, orbax-checkpoint {m.get('orbax_checkpoint')}, "
             f"Python {m.get('python')}.", ""]
    for name, part in report["parts"].items():
        lines.append(f"## {name}: rc {part['returncode']}, {part['seconds']} s")
        if part.get("rows"):
            lines += ["", benchmark.table(part["rows"])]
        if part.get("end_to_end"):
            e = part["end_to_end"]
            lines.append(f"\n{e['steps']} steps in {e['wall_seconds']:.1f} s, "
                         f"{e['steps_per_s_after_first_eval']:.1f} steps/s after the first "
                         "evaluation (evaluations included)")
        lines.append("")
    if report.get("full_cifar10"):
        lines += ["## The full CIFAR-10 CNN-13 run at the measured step", "",
                  "| algorithm | meta_grad | dtype | runs | steps | hours (all runs) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['algorithm']} | {r['meta_grad'] or '-'} | {r['compute_dtype']} | "
                  f"{r['num_runs']} | {r['steps']} | {r['hours']:.2f} |"
                  for r in report["full_cifar10"]]
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict[str, Any]) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv: Sequence[str]) -> None:
    del argv
    out = Path(_OUT.value)
    logs = Path(_LOGS.value or out / "logs")
    for folder in (out, logs):
        folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(work / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    report: dict[str, Any] = {"machine": machine(), "parts": {}}
    write(out, report)
    groups = [Group(model, dtype) for model in _MODELS.value for dtype in _DTYPES.value]

    compile_env = {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    started = time.perf_counter()
    rows = [(g, i, row) for g in groups for i, row in enumerate(g.rows())]
    procs = [subprocess.Popen(benchmark_argv(g.model, [row], work / f"c_{g.name}_{i}.json", 1, 0),
                              env=compile_env, stdout=open(logs / f"compile_{g.name}_{i}.log", "w"),
                              stderr=subprocess.STDOUT) for g, i, row in rows]
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=_PART_TIMEOUT.value))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append("timeout")
    report["parts"]["compile, all rows at once"] = {
        "returncode": codes, "seconds": round(time.perf_counter() - started, 1)}
    write(out, report)

    for group in groups:
        json_path = work / f"{group.name}.json"
        part = run_part(benchmark_argv(group.model, group.rows(), json_path, FLAGS.steps,
                                       FLAGS.warmup), env, logs / f"{group.name}.log")
        if json_path.exists():
            part["rows"] = json.loads(json_path.read_text())
        report["parts"][group.name] = part
        write(out, report)

    if _E2E_STEPS.value:
        workdir = work / "digits"
        part = run_part([sys.executable, "-m", "meta_semi_jax.main",
                         "--config=configs/digits.py:50", f"--workdir={workdir}",
                         f"--config.num_train_steps={_E2E_STEPS.value}",
                         f"--config.eval_every_steps={max(1, _E2E_STEPS.value // 3)}",
                         f"--config.log_every_steps={max(1, _E2E_STEPS.value // 10)}"],
                        env, logs / "end_to_end_digits.log")
        if part["returncode"] == 0:
            part["end_to_end"] = end_to_end_rate(workdir / "metrics.jsonl")
        report["parts"][f"end to end: digits:50, {_E2E_STEPS.value} steps"] = part
    rows = [r for p in report["parts"].values() for r in p.get("rows", [])]
    report["full_cifar10"] = full_cifar10_hours(rows)
    write(out, report)
    print(markdown(report))


if __name__ == "__main__":
    app.run(main)
