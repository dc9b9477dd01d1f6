"""Runs that survive: a run killed with SIGKILL and restarted ends bitwise where an
uninterrupted run ends; SIGTERM saves and exits 0; other configs are refused."""
from __future__ import annotations

import json
import pathlib
import shutil
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.run_files import (
    QUICK_RUN,
    QUICK_RUN_DEVICES,
    QUICK_RUN_DIAGNOSTICS,
    records_without_time,
    results_without_time,
    run_program,
    start_program,
)

# Shares the quick run's compiled programs with test_main and test_experiments.
pytestmark = pytest.mark.xdist_group("quick_run")


# Every run here is the quick run of ``conftest.finished_quick_run`` (the uninterrupted
# reference), in another workdir or with changes.
def run(workdir, *extra):
    return run_program("meta_semi_jax.main", *QUICK_RUN, *QUICK_RUN_DIAGNOSTICS,
                       f"--workdir={workdir}", *extra, devices=QUICK_RUN_DEVICES)


def start(workdir, *extra):
    return start_program("meta_semi_jax.main", *QUICK_RUN, *QUICK_RUN_DIAGNOSTICS,
                         f"--workdir={workdir}", *extra, devices=QUICK_RUN_DEVICES)


def wait_for_checkpoint(workdir, step, proc, timeout=240):
    """Until orbax has finalised checkpoint ``step`` (its directory is renamed into place)."""
    target = pathlib.Path(workdir) / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def final_params(workdir):
    manager = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints")
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored.state


@pytest.fixture
def uninterrupted(finished_quick_run):
    return finished_quick_run.workdir


def test_sigkill_and_restart_reach_bitwise_the_same_run(uninterrupted, tmp_path):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, 30, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results.json").exists()  # it really died mid-way
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from the checkpoint at step" in again.stderr
    assert results_without_time(tmp_path) == results_without_time(uninterrupted)
    assert records_without_time(tmp_path) == records_without_time(uninterrupted)
    step_a, state_a = final_params(uninterrupted)
    step_b, state_b = final_params(tmp_path)
    assert step_a == step_b == 90
    flat_a, flat_b = ocp.tree.to_flat_dict(state_a), ocp.tree.to_flat_dict(state_b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=str(key))


@pytest.mark.slow  # two more processes (CI runs it)
def test_sigterm_saves_a_checkpoint_and_exits_0_then_resumes(uninterrupted, tmp_path):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, 30, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in stderr
    assert not (tmp_path / "results.json").exists()
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert results_without_time(tmp_path) == results_without_time(uninterrupted)


def test_a_checkpoint_from_another_config_is_refused_and_kept(uninterrupted, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")}
    proc = run(uninterrupted, "--config.beta=0.7")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "beta: 0.5 -> 0.7" in lines[0], proc.stderr
    assert {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*")} == before


@pytest.mark.slow  # a process with a program of its own (CI runs it)
def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(uninterrupted, tmp_path):
    """Resume a finished run's checkpoint before its last step with a learning rate that
    diverges: the run stops with exit status 3 at the next log step (every 15), naming
    the step and the checkpoint, which is kept."""
    step = max(int(p.name) for p in (uninterrupted / "checkpoints").iterdir()
               if p.name.isdigit() and int(p.name) < 90)  # the kept one before the last
    shutil.copytree(uninterrupted / "checkpoints" / str(step),
                    tmp_path / "checkpoints" / str(step))
    proc = run(tmp_path, "--config.allow_config_change=True", "--config.learning_rate=1e30")
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"non-finite training metrics by step {step + 15}" in error[0]
    assert f"the last good checkpoint is step {step}" in error[0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(step)]
    assert not (tmp_path / "results.json").exists()


def test_wall_seconds_count_each_second_once(finished_quick_run, uninterrupted):
    """A run's recorded time is at most the time its process took (saves do not add it
    up repeatedly), and the last checkpoint's time is at most the final one."""
    elapsed = finished_quick_run.seconds
    results = json.loads((uninterrupted / "results.json").read_text())
    loop = ocp.CheckpointManager(uninterrupted / "checkpoints").restore(
        90, args=ocp.args.Composite(loop=ocp.args.JsonRestore())).loop
    assert 0 < loop["wall_seconds"] <= results["wall_seconds"] <= elapsed
