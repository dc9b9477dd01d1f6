"""The training program end to end, in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "meta_semi_jax.main", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


SHORT_RUN = ("--config.num_train_steps=30", "--config.eval_every_steps=15",
             "--config.log_every_steps=10")


@pytest.mark.parametrize("algorithm,devices,parallel", [
    ("meta_semi", 2, "shard_map"), ("meta_semi", 2, "pmap"), ("supervised", 1, "shard_map")])
def test_short_run_writes_results_and_metrics(tmp_path, algorithm, devices, parallel):
    # Assumption 1's ratio (an extra compiled program) once, under the default wrapper.
    ratio = (["--config.log_assumption_ratio=True", "--config.assumption_ratio_samples=4"]
             if algorithm == "meta_semi" and parallel == "shard_map" else [])
    proc = run_main("--config=configs/digits.py:50", f"--workdir={tmp_path}",
                    f"--config.algorithm={algorithm}", f"--config.parallel={parallel}",
                    *SHORT_RUN, *ratio, devices=devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_accuracy", "test_error", "best_val_test_error", "val_accuracy", "step",
                "algorithm", "dataset", "num_labels", "seed", "wall_seconds"):
        assert key in results
    assert results["algorithm"] == algorithm and results["num_labels"] == 50
    assert results["step"] == 30 and results["num_devices"] == devices
    assert results["parallel"] == parallel
    assert results["test_accuracy"] + results["test_error"] == pytest.approx(100.0)
    assert 0.0 <= results["test_error"] <= 100.0
    records = [json.loads(line) for line in
               (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [15, 30]
    assert all(0.0 <= r["val_accuracy"] <= 100.0 for r in records)
    assert "steps/s" in proc.stderr
    if algorithm == "meta_semi":
        assert all(0.0 <= r["selected"] <= 1.0 for r in records)
        assert all(0.0 <= r["pseudo_label_accuracy"] <= 100.0 for r in records)
        assert all("selected_pseudo_label_accuracy" in r for r in records)
        assert all(("assumption_ratio" in r) == bool(ratio) for r in records)
        assert all(0.0 < r["assumption_ratio"] < float("inf") for r in records if ratio)
        assert "selected 0." in proc.stderr or "selected 1." in proc.stderr
    assert json.loads((tmp_path / "config.json").read_text())["algorithm"] == algorithm
    assert json.loads((tmp_path / "environment.json").read_text())["processes"] == 1
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert (tmp_path / "checkpoints" / "30").is_dir()


DIVISIBLE_BATCHES = ("--config.labeled_batch_size=24", "--config.unlabeled_batch_size=72")
BAD_INPUTS = [
    (("--config.algorithm=fixmatch",), "config.algorithm='fixmatch'", "meta_semi"),
    (("--config.model=resnet50",), "config.model='resnet50'", "small_cnn"),
    (("--config.dataset=imagenet",), "config.dataset='imagenet'", "digits"),
    (("--config.meta_grad=hessian",), "config.meta_grad='hessian'", "jvp"),
    (("--config.num_labels=55",), "config.num_labels=55", "multiple of the 10 classes"),
    (("--config.num_labels=0",), "config.num_labels=0", "positive"),
    (("--config.num_labels=1300",), "config.num_labels=1300", "at most"),
    (("--config.labeled_batch_size=30",), "config.labeled_batch_size=30",
     "multiple of the number of devices (4)"),
    (("--config.labeled_batch_size=64",), "config.labeled_batch_size=64",
     "must not exceed the 50 labeled examples"),
    (("--config.beta=0",), "config.beta=0", "> 0"),
    (("--config.beta=-1.0",), "config.beta=-1.0", "> 0"),
    (("--config.betta=1.0",), "unknown field 'betta'", 'Did you mean "beta"'),
    (("--config.beta=abc",), "--config.beta=abc", "could not convert"),
    (("--config=configs/digits.py:abc",), "got 'abc'", "must be an integer"),
    (("--config.translate=-1",), "config.translate=-1", "an integer >= 0"),
    (("--config.ema_decay=1.0",), "config.ema_decay=1.0", "[0, 1)"),
    (("--config.learning_rate=0",), "config.learning_rate=0", "> 0"),
    (("--config.parallel=xla",), "config.parallel='xla'", "pmap, shard_map"),
    (("--config.optimizer=rmsprop",), "config.optimizer='rmsprop'", "adam, sgd"),
    (("--config.unlabeled_placement=everywhere",), "config.unlabeled_placement='everywhere'",
     "host, replicated, sharded"),
    (("--config.unlabeled_placement=host", "--config.log_assumption_ratio=True"),
     "config.log_assumption_ratio=True", "'replicated' or 'sharded'"),
    (("--config.checkpoint_every_steps=0",), "config.checkpoint_every_steps=0", "positive"),
    (("--config.seed=-1",), "config.seed=-1", ">= 0"),
    (("--config.eval_batch_size=30",), "config.eval_batch_size=30", "number of devices (4)"),
    (("--config.num_validation=1300",), "config.num_validation=1300",
     "smallest class of digits has"),
    (("--config=configs/stl10.py:1000", "--config.fold=10"), "config.fold=10", "folds 0-9"),
    (("--config=configs/cifar10.py:1000", *DIVISIBLE_BATCHES, "--config.dataset=tfds:no_such_set"),
     "tfds:no_such_set", "tfds knows no dataset"),
    (("--config=configs/cifar10.py:1000", *DIVISIBLE_BATCHES,
      "--config.data_dir=/nonexistent/tfds"),
     "dataset 'cifar10'", "python -m meta_semi_jax.data prepare cifar10"),
    (("--coordinator_address=127.0.0.1:1",), "--coordinator_address", "--num_processes"),
    (("surplus",), "unexpected arguments", "surplus"),
    (("--config.algorithm=supervised", "--config.log_assumption_ratio=True"),
     "config.log_assumption_ratio=True", "needs config.algorithm='meta_semi'"),
]


@pytest.mark.parametrize("args,names,allowed", BAD_INPUTS,
                         ids=[" ".join(a) for a, _, _ in BAD_INPUTS])
def test_bad_input_stops_with_one_line_and_keeps_the_workdir(tmp_path, args, names, allowed):
    keep = tmp_path / "notes.txt"
    keep.write_text("written before the run")
    config = [] if any(a.startswith("--config=") for a in args) else [
        "--config=configs/digits.py:50"]
    proc = run_main(*config, f"--workdir={tmp_path}", *args, devices=4)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and names in lines[0] and allowed in lines[0]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert keep.read_text() == "written before the run"


def assert_one_error_line(proc, *parts):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(part in lines[0] for part in parts), lines[0]


def test_unwritable_workdir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_main("--config=configs/digits.py:50", f"--workdir={blocker}/run")
    assert_one_error_line(proc, f"--workdir={blocker}/run cannot be used")
    assert blocker.read_text() == "not a directory"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    proc = run_main("--config=configs/digits.py:50", f"--workdir={workdir}", *SHORT_RUN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir


@pytest.mark.parametrize("damage", ["loop/metadata", "state/manifest.ocdbt", "state/_METADATA"])
def test_damaged_checkpoint_is_refused_and_nothing_is_changed(finished_run, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    damaged = workdir / "checkpoints" / "30" / damage
    damaged.write_bytes(damaged.read_bytes()[:10])
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    proc = run_main("--config=configs/digits.py:50", f"--workdir={workdir}", *SHORT_RUN)
    assert_one_error_line(proc, "the latest checkpoint (step 30)", "cannot be read")
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_missing_config_file_is_one_line(tmp_path):
    proc = run_main("--config=configs/nope.py:50", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No such file" in lines[0] and "nope.py" in lines[0], proc.stderr
