"""Helpers shared by the tests: the repository's root, the program started as a user
starts it (``python -m ...`` in a subprocess, with a given number of simulated CPU
devices), a config file loaded as ``--config=FILE:ARG`` loads it, and what a run
writes, read back without its wall-clock times for comparisons."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]

# The tests' end-to-end digits run: its compiled programs (a function of the config and
# the device count, not of the seeds) are shared by every test that runs it, through the
# session's compilation cache (``conftest.py``), so that most of its runs compile nothing.
# The selection probe (``selection.py``) scores one unlabeled batch per evaluation.
QUICK_RUN = ("--config=configs/digits.py:50", "--config.num_train_steps=90",
             "--config.eval_every_steps=15", "--config.checkpoint_every_steps=30",
             "--config.log_every_steps=15", "--config.selection_probe_size=96")
QUICK_RUN_DEVICES = 2
# Assumption 1's ratio (a program of its own) at each evaluation of the shared quick run
# (``conftest.finished_quick_run``).
QUICK_RUN_DIAGNOSTICS = ("--config.log_assumption_ratio=True",
                         "--config.assumption_ratio_samples=1")


# XLA:CPU ends a program (SIGABRT) when its simulated devices reach a collective more
# than 40 s apart, its default; two test workers and their programs on a 2-core machine
# can delay one device's thread that long (seen once in CI: an all-gather of the
# parallel-runs program). The suite's programs wait up to 10 minutes, their own timeout.
CPU_COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds=600"


def program_environment(devices: int | None = None) -> dict[str, str]:
    """This process's environment (with the session's compilation cache, see
    ``conftest.py``) for a program with ``devices`` simulated CPU devices, or with
    XLA's own default (one CPU device) when ``devices`` is None. The repository comes
    first on the module path, then whatever this process's ``PYTHONPATH`` holds."""
    flags = ("" if devices is None else
             f"--xla_force_host_platform_device_count={devices} {CPU_COLLECTIVE_TIMEOUT_FLAG}")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=path)


def program_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_program(module: str, *args: str, devices: int | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m module args...`` in the repository to its end."""
    return subprocess.run(program_command(module, *args), cwd=REPO,
                          env=program_environment(devices), capture_output=True, text=True,
                          timeout=timeout)


def start_program(module: str, *args: str, devices: int | None = None) -> subprocess.Popen:
    """Starts ``python -m module args...``; its stderr is a pipe, its stdout discarded."""
    return subprocess.Popen(program_command(module, *args), cwd=REPO,
                            env=program_environment(devices), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def load_config(name: str, arg: str) -> ml_collections.ConfigDict:
    """A fresh ``configs/<name>.py`` config for ``arg`` (each call a new, mutable one)."""
    spec = importlib.util.spec_from_file_location(f"{name}_config_under_test",
                                                  REPO / "configs" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "wall_seconds"}


def results_without_time(workdir) -> dict:
    """``results.json`` of a run, without its wall-clock time."""
    return without_time(json.loads((pathlib.Path(workdir) / "results.json").read_text()))


def records_without_time(workdir) -> list[dict]:
    """``metrics.jsonl``'s evaluation records, without their wall-clock times."""
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [without_time(json.loads(line)) for line in lines]


def one_line_refusal(workdir: pathlib.Path, *args: str) -> str:
    """Runs the program with ``args`` on ``workdir`` (an empty folder) and checks that it
    stops with exit status 2, one line on stderr and the workdir untouched; returns the
    line."""
    workdir.mkdir(exist_ok=True)
    proc = run_program("meta_semi_jax.main", f"--workdir={workdir}", *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert not any(workdir.iterdir())
    return lines[0]
