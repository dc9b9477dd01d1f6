"""The training program end to end, as a user runs it: ``python -m meta_semi_jax.main``
in a subprocess, and its bad inputs."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest

from meta_semi_jax import train
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data import DataError
from tests.run_files import (
    QUICK_RUN,
    QUICK_RUN_DEVICES,
    QUICK_RUN_DIAGNOSTICS,
    load_config,
    run_program,
)

# Shares the quick run's compiled programs (the session's cache) with test_resume and
# test_experiments: one worker runs them in turn.
pytestmark = pytest.mark.xdist_group("quick_run")


def run_main(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    return run_program("meta_semi_jax.main", *args, devices=devices)


SHORT_RUNS = [("meta_semi", QUICK_RUN_DEVICES, "shard_map"),
              ("meta_semi", QUICK_RUN_DEVICES, "pmap"), ("supervised", 1, "shard_map")]


@pytest.fixture(scope="session")  # kept while the worker runs other files
def short_runs(tmp_path_factory, finished_quick_run):
    """Each of ``SHORT_RUNS`` run once, on demand: (workdir, finished process). The
    first is the shared quick run, with Assumption 1's ratio (a program of its own) under
    the default wrapper."""
    finished = {SHORT_RUNS[0]: (finished_quick_run.workdir, finished_quick_run.process)}

    def run(algorithm: str, devices: int, parallel: str):
        if (algorithm, devices, parallel) not in finished:
            workdir = tmp_path_factory.mktemp(f"{algorithm}_{devices}_{parallel}")
            proc = run_main(*QUICK_RUN, f"--workdir={workdir}",
                            f"--config.algorithm={algorithm}", f"--config.parallel={parallel}",
                            devices=devices)
            assert proc.returncode == 0, proc.stderr[-3000:]
            finished[algorithm, devices, parallel] = workdir, proc
        return finished[algorithm, devices, parallel]
    return run


@pytest.mark.parametrize("algorithm,devices,parallel", [
    # The pmap wrapper's run is a program of its own (the in-process pmap equivalence of
    # test_parallel is in the default run): in `pytest -m slow`.
    pytest.param(*run, marks=pytest.mark.slow) if run[2] == "pmap" else run
    for run in SHORT_RUNS])
def test_short_run_writes_results_and_metrics(short_runs, algorithm, devices, parallel):
    workdir, proc = short_runs(algorithm, devices, parallel)
    ratio = algorithm == "meta_semi" and parallel == "shard_map"
    results = json.loads((workdir / "results.json").read_text())
    for key in ("test_accuracy", "test_error", "best_val_test_error", "val_accuracy", "step",
                "algorithm", "dataset", "num_labels", "seed", "wall_seconds"):
        assert key in results
    assert results["algorithm"] == algorithm and results["num_labels"] == 50
    assert results["step"] == 90 and results["num_devices"] == devices
    assert results["parallel"] == parallel
    assert results["test_accuracy"] + results["test_error"] == pytest.approx(100.0)
    assert 0.0 <= results["test_error"] <= 100.0
    records = [json.loads(line) for line in
               (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [15, 30, 45, 60, 75, 90]
    assert all(0.0 <= r["val_accuracy"] <= 100.0 for r in records)
    assert "steps/s" in proc.stderr
    if algorithm == "meta_semi":
        assert all(0.0 <= r["selected"] <= 1.0 for r in records)
        assert all(0.0 <= r["pseudo_label_accuracy"] <= 100.0 for r in records)
        # Counted over the 15 steps since the last evaluation: 96 unlabeled examples each.
        assert all(r["pseudo_label_count"] == 15 * 96 for r in records)
        assert all(r["selected_pseudo_label_count"] + r["rejected_pseudo_label_count"]
                   == 15 * 96 for r in records)
        assert all(0.0 <= r["selected_pseudo_label_accuracy"] <= 100.0 for r in records)
        # The selection probe, on one unlabeled batch (run_files.QUICK_RUN).
        assert all(r["probe_size"] == 96 for r in records)
        assert all(0.0 <= r["probe_score_auroc"] <= 1.0 for r in records)
        assert all(("assumption_ratio" in r) == ratio for r in records)
        assert all(0.0 < r["assumption_ratio"] < float("inf") for r in records if ratio)
        assert "selected 0." in proc.stderr or "selected 1." in proc.stderr
    assert json.loads((workdir / "config.json").read_text())["algorithm"] == algorithm
    assert json.loads((workdir / "environment.json").read_text())["processes"] == 1
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert (workdir / "checkpoints" / "90").is_dir()


DIVISIBLE_BATCHES = {"labeled_batch_size": 24, "unlabeled_batch_size": 72}

# Bad config values, each refused by the function ``main`` runs, ``train_and_evaluate``,
# before anything is computed or written; checked in-process (4 devices, as the CLI cases
# below). (config file, its argument, overrides, words naming the value, what is allowed)
BAD_VALUES = [
    ("digits", "50", {"model": "resnet50"}, "config.model='resnet50'", "small_cnn"),
    ("digits", "50", {"dataset": "imagenet"}, "config.dataset='imagenet'", "digits"),
    ("digits", "50", {"meta_grad": "hessian"}, "config.meta_grad='hessian'", "jvp"),
    ("digits", "50", {"num_labels": 55}, "config.num_labels=55", "multiple of the 10 classes"),
    ("digits", "50", {"num_labels": 0}, "config.num_labels=0", "positive"),
    ("digits", "50", {"labeled_batch_size": 30}, "config.labeled_batch_size=30",
     "multiple of the number of devices (4)"),
    ("digits", "1040", {"unlabeled_batch_size": 96}, "config.unlabeled_batch_size=96",
     "must not exceed the 57 unlabeled examples"),
    ("digits", "50", {"beta": 0.0}, "config.beta=0", "> 0"),
    ("digits", "50", {"beta": -1.0}, "config.beta=-1.0", "> 0"),
    ("digits", "50", {"translate": -1}, "config.translate=-1", "an integer >= 0"),
    ("digits", "50", {"ema_decay": 1.0}, "config.ema_decay=1.0", "[0, 1)"),
    ("digits", "50", {"learning_rate": 0.0}, "config.learning_rate=0", "> 0"),
    ("digits", "50", {"parallel": "xla"}, "config.parallel='xla'", "pmap, shard_map"),
    ("digits", "50", {"optimizer": "rmsprop"}, "config.optimizer='rmsprop'", "adam, sgd"),
    ("digits", "50", {"unlabeled_placement": "everywhere"},
     "config.unlabeled_placement='everywhere'", "host, replicated, sharded"),
    ("digits", "50", {"unlabeled_placement": "host", "log_assumption_ratio": True},
     "config.log_assumption_ratio=True", "'replicated' or 'sharded'"),
    ("digits", "50", {"checkpoint_every_steps": 0}, "config.checkpoint_every_steps=0",
     "positive"),
    ("digits", "50", {"seed": -1}, "config.seed=-1", ">= 0"),
    ("digits", "50", {"eval_batch_size": 30}, "config.eval_batch_size=30",
     "number of devices (4)"),
    ("digits", "50", {"num_validation": 1300}, "config.num_validation=1300",
     "smallest class of digits has"),
    ("stl10", "1000", {"fold": 10}, "config.fold=10", "folds 0-9"),
    ("cifar10", "1000", {**DIVISIBLE_BATCHES, "dataset": "tfds:no_such_set"},
     "tfds:no_such_set", "tfds knows no dataset"),
    ("digits", "50", {"algorithm": "supervised", "log_assumption_ratio": True},
     "config.log_assumption_ratio=True", "needs config.algorithm='meta_semi'"),
]


def notes_in(workdir: pathlib.Path) -> pathlib.Path:
    notes = workdir / "notes.txt"
    notes.write_text("written before the run")
    return notes


def assert_only_the_notes_are_there(workdir: pathlib.Path, notes: pathlib.Path) -> None:
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
    assert notes.read_text() == "written before the run"


@pytest.mark.parametrize("name,arg,overrides,names,allowed", BAD_VALUES,
                         ids=[f"{n}:{a} {o}" for n, a, o, _, _ in BAD_VALUES])
def test_bad_value_is_refused_in_one_line_before_anything_is_written(
        tmp_path, name, arg, overrides, names, allowed):
    notes = notes_in(tmp_path)
    config = load_config(name, arg)
    config.update(overrides)
    with pytest.raises((ConfigError, DataError)) as error:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and names in message and allowed in message, message
    assert_only_the_notes_are_there(tmp_path, notes)


# What only the command line shows: flag parsing, config-file arguments, the process
# flags, and, once for each kind of error ``train_and_evaluate`` raises (a field, a
# check against the data, missing data), the one ``error:`` line and exit status 2.
BAD_COMMAND_LINES = [
    (("--config.algorithm=fixmatch",), "config.algorithm='fixmatch'", "meta_semi"),
    (("--config.num_labels=1300",), "config.num_labels=1300", "at most"),
    (("--config=configs/cifar10.py:1000", "--config.labeled_batch_size=24",
      "--config.unlabeled_batch_size=72", "--config.data_dir=/nonexistent/tfds"),
     "dataset 'cifar10'", "python -m meta_semi_jax.data prepare cifar10"),
    (("--config.betta=1.0",), "unknown field 'betta'", 'Did you mean "beta"'),
    (("--config.beta=abc",), "--config.beta=abc", "could not convert"),
    (("--config=configs/digits.py:abc",), "got 'abc'", "must be an integer"),
    (("--coordinator_address=127.0.0.1:1",), "--coordinator_address", "--num_processes"),
    (("surplus",), "unexpected arguments", "surplus"),
]


@pytest.mark.parametrize("args,names,allowed", BAD_COMMAND_LINES,
                         ids=[" ".join(a) for a, _, _ in BAD_COMMAND_LINES])
def test_bad_command_line_stops_with_one_line_and_keeps_the_workdir(tmp_path, args, names,
                                                                    allowed):
    notes = notes_in(tmp_path)
    config = [] if any(a.startswith("--config=") for a in args) else [
        "--config=configs/digits.py:50"]
    proc = run_main(*config, f"--workdir={tmp_path}", *args, devices=4)
    assert_one_error_line(proc, names, allowed)
    assert "Traceback" not in proc.stderr
    assert_only_the_notes_are_there(tmp_path, notes)


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


@pytest.mark.parametrize("damage", ["loop/metadata", "state/manifest.ocdbt", "state/_METADATA"])
def test_damaged_checkpoint_is_refused_and_nothing_is_changed(short_runs, tmp_path, damage):
    finished, _ = short_runs(*SHORT_RUNS[0])
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    damaged = workdir / "checkpoints" / "90" / damage
    damaged.write_bytes(damaged.read_bytes()[:10])
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    proc = run_main(*QUICK_RUN, *QUICK_RUN_DIAGNOSTICS, f"--workdir={workdir}",
                    devices=QUICK_RUN_DEVICES)
    assert_one_error_line(proc, "the latest checkpoint (step 90)", "cannot be read")
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_missing_config_file_is_one_line(tmp_path):
    proc = run_main("--config=configs/nope.py:50", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No such file" in lines[0] and "nope.py" in lines[0], proc.stderr


def test_actions_are_due_at_each_multiple_and_after_the_last_step():
    from meta_semi_jax.loop import itstime
    assert [s for s in range(1, 101) if itstime(s, 30, 100)] == [30, 60, 90, 100]
    assert [s for s in range(1, 91) if itstime(s, 15, 90)] == [15, 30, 45, 60, 75, 90]
