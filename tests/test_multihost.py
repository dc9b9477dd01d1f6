"""Two processes on 127.0.0.1 with 2 CPU devices each form one JAX system whose run
equals one process with 4 devices."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = ("--config=configs/digits.py:50", "--config.num_train_steps=20",
       "--config.eval_every_steps=10", "--config.log_every_steps=10")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, devices, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "meta_semi_jax.main", f"--workdir={workdir}",
                             *RUN, *extra], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def metric_lines(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir):
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return ocp.tree.to_flat_dict(restored.state["params"])


def results(workdir):
    record = json.loads((workdir / "results.json").read_text())
    del record["wall_seconds"]
    return record


def test_two_processes_equal_one_process_with_all_devices(tmp_path):
    port = free_port()
    two = tmp_path / "two"
    procs = [launch(two, 2, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}") for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    one = tmp_path / "one"
    single = launch(one, 4)
    assert single.wait(timeout=300) == 0, single.stderr.read()[-2000:]
    assert results(two) == results(one)
    # Cross-process collectives sum in another order: equal up to float32 rounding.
    for a, b in zip(metric_lines(two), metric_lines(one), strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in b], rtol=1e-5)
    params_two, params_one = final_params(two), final_params(one)
    assert params_two.keys() == params_one.keys()
    for key in params_one:
        np.testing.assert_allclose(params_two[key], params_one[key], rtol=1e-5, atol=1e-6)
    assert json.loads((two / "environment.json").read_text())["processes"] == 2
