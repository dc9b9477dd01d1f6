"""Two processes on 127.0.0.1 with 2 CPU devices each form one JAX system whose run
equals one process with 4 devices, with the unlabeled pool replicated or sharded (each
host then holds only its devices' shards). SIGTERM to one of them stops both at the same
step, with one checkpoint there."""
from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.run_files import records_without_time, results_without_time, start_program

RUN = ("--config=configs/digits.py:50", "--config.num_train_steps=20",
       "--config.eval_every_steps=10", "--config.log_every_steps=10")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, devices, *extra):
    return start_program("meta_semi_jax.main", f"--workdir={workdir}", *RUN, *extra,
                         devices=devices)


def final_params(workdir):
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return ocp.tree.to_flat_dict(restored.state["params"])


def unlabeled_bytes(log: str) -> int:
    return int(re.search(r"unlabeled images \(\w+\): (\d+) bytes on this process", log)[1])


# Three processes, each compiling the step: in `pytest -m slow` (CI runs it).
@pytest.mark.slow
@pytest.mark.parametrize("placement", ["replicated", "sharded"])
def test_two_processes_equal_one_process_with_all_devices(tmp_path, placement):
    port = free_port()
    two = tmp_path / "two"
    placed = f"--config.unlabeled_placement={placement}"
    procs = [launch(two, 2, placed, f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2", f"--process_id={i}") for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    one = tmp_path / "one"
    single = launch(one, 4, placed)
    log = single.communicate(timeout=300)[1]
    assert single.returncode == 0, log[-2000:]
    # digits with 50 labels: 1,047 unlabeled 8x8x1 uint8 images (1,044 when sharded
    # over 4 devices). Replicated: every device holds the pool; sharded: a quarter each.
    pool = 1047 * 64
    per_device = {"replicated": pool, "sharded": 1044 * 64 // 4}[placement]
    assert unlabeled_bytes(log) == 4 * per_device
    assert [unlabeled_bytes(e) for e in errors] == [2 * per_device] * 2
    assert results_without_time(two) == results_without_time(one)
    # Cross-process collectives sum in another order: equal up to float32 rounding. The
    # selection probe's AUROCs are rank statistics of float32 scores, where that rounding
    # can swap two near-equal scores: a pair of ~1,000 examples moves them by < 1e-3.
    for a, b in zip(records_without_time(two), records_without_time(one), strict=True):
        assert a.keys() == b.keys()
        ranked = [k for k in a if k.startswith("probe_") and "auroc" in k]
        np.testing.assert_allclose([a[k] for k in a if k not in ranked],
                                   [b[k] for k in b if k not in ranked], rtol=1e-5)
        np.testing.assert_allclose([a[k] for k in ranked], [b[k] for k in ranked], atol=1e-3)
    params_two, params_one = final_params(two), final_params(one)
    assert params_two.keys() == params_one.keys()
    for key in params_one:
        np.testing.assert_allclose(params_two[key], params_one[key], rtol=1e-5, atol=1e-6)
    assert json.loads((two / "environment.json").read_text())["processes"] == 2


class Stderr:
    """A started process's stderr, read line by line by a thread, so that its pipe never
    fills while the test waits."""

    def __init__(self, proc):
        self._proc, self._lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stderr:
            self._lines.append(line)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Until a line holds ``text``; fails if the process ends first."""
        deadline = time.time() + timeout
        while not any(text in line for line in self._lines):
            assert self._proc.poll() is None, "".join(self._lines)[-3000:]
            assert time.time() < deadline, f"no line with {text!r}"
            time.sleep(0.05)

    def text(self, timeout: float = 120) -> str:
        """All of it, once the process has ended."""
        self._proc.wait(timeout=timeout)
        self._thread.join()
        return "".join(self._lines)


# Long enough to be interrupted a few seconds after its first step; it evaluates and saves
# at its end only, so that the preemption's checkpoint is the only one.
STEPS = 300
PREEMPTED = (f"--config.num_train_steps={STEPS}", f"--config.eval_every_steps={STEPS}",
             f"--config.checkpoint_every_steps={STEPS}", "--config.log_every_steps=100")


def launch_both(workdir) -> list:
    port = free_port()
    return [launch(workdir, 2, *PREEMPTED, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in range(2)]


# Two processes: in `pytest -m slow`.
@pytest.mark.slow
@pytest.mark.parametrize("signalled", [1, 0])
def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path, signalled):
    """SIGTERM to one process of two (a worker, or the coordinator): both save one
    checkpoint at the same step, which restores, and exit 0."""
    procs = launch_both(tmp_path)
    stderrs = [Stderr(p) for p in procs]
    for stderr in stderrs:
        stderr.wait_for("first step")
    procs[signalled].send_signal(signal.SIGTERM)
    errors = [stderr.text() for stderr in stderrs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    pattern = (r"SIGTERM to at least one of the 2 processes: saved a checkpoint at step "
               r"(\d+) in ")
    steps = [int(re.search(pattern, e)[1]) for e in errors]
    assert steps[0] == steps[1] < STEPS
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [str(steps[0])]
    assert not (tmp_path / "results.json").exists()
    loop = ocp.CheckpointManager(tmp_path / "checkpoints").restore(
        steps[0], args=ocp.args.Composite(loop=ocp.args.JsonRestore())).loop
    assert loop["step"] == steps[0]
    assert final_params(tmp_path)  # the train state restores too
