"""Parallel runs (``config.num_parallel_runs``, ``run_set``): K runs trained by one
vmapped step write a run's files each, are what ``experiments.run --parallel_runs``
trains per cell, equal the K runs trained one by one and resume together (both in
``-m slow``; ``test_parallel`` checks the vmapped step itself in float64)."""
from __future__ import annotations

import json
import signal

import jax
import numpy as np
import pytest

from experiments import report
from meta_semi_jax import run_set
from meta_semi_jax.build import load_checked_data
from meta_semi_jax.config_check import ConfigError, check_config
from meta_semi_jax.loop import place_pools
from meta_semi_jax.parallel import DataParallel, make_mesh
from meta_semi_jax.run_dir import check_same_run_count
from tests.run_files import (
    QUICK_RUN,
    QUICK_RUN_DEVICES,
    load_config,
    records_without_time,
    results_without_time,
    run_program,
    start_program,
)

# Shares the quick run's compiled programs (and the finished quick run itself).
pytestmark = pytest.mark.xdist_group("quick_run")

QUICK_FIELDS = [flag.removeprefix("--config.") for flag in QUICK_RUN
                if flag.startswith("--config.")]
SET_ARGS = ("--table=1", "--seeds=2", "--dataset=digits", "--cells=/meta_semi/",
            "--parallel_runs", *(f"--override={field}" for field in QUICK_FIELDS))


@pytest.fixture(scope="module")
def parallel_root(tmp_path_factory, finished_quick_run):
    """Two seeds of the quick run's Meta-Semi trained together by the experiment runner
    (after the quick run, whose programs the runs' evaluations share)."""
    root = tmp_path_factory.mktemp("parallel")
    proc = run_program("experiments.run", *SET_ARGS, f"--root={root}",
                       devices=QUICK_RUN_DEVICES, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "1 runs, 0 finished, 1 to run" in proc.stdout
    return root


@pytest.mark.slow  # three processes of new programs (CI runs it)
def test_parallel_runs_start_as_the_runs_trained_one_by_one(tmp_path):
    """ICT runs trained together and alone: the first evaluation (step 15) has the same
    accuracies and the same losses to 1e-5. Later float32 noise (the vmapped step sums
    in another order) grows as SGD's trajectories do, about 1,000-fold in the next 15
    steps (as under another device count), so whole runs are compared by the resume
    test instead, and the vmapped step exactly in float64 by ``test_parallel``."""
    args = [*QUICK_RUN, "--config.algorithm=ict"]
    together = tmp_path / "together"
    proc = run_program("meta_semi_jax.main", *args, "--config.num_parallel_runs=2",
                       f"--workdir={together}", devices=QUICK_RUN_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in (0, 1):
        alone = tmp_path / f"alone_{i}"
        proc = run_program("meta_semi_jax.main", *args, f"--config.seed={i}",
                           f"--config.split_seed={i}", f"--workdir={alone}",
                           devices=QUICK_RUN_DEVICES)
        assert proc.returncode == 0, proc.stderr[-3000:]
        first, first_alone = (records_without_time(d)[0] for d in (together / f"run_{i}",
                                                                    alone))
        assert first.keys() == first_alone.keys() and first["step"] == 15
        for key, value in first.items():
            if isinstance(value, float) and "accuracy" not in key:
                np.testing.assert_allclose(value, first_alone[key], rtol=1e-5, err_msg=key)
            else:
                assert value == first_alone[key], key


def test_each_run_has_its_own_files_and_the_set_a_summary(parallel_root):
    method = parallel_root / "digits_50" / "meta_semi"
    summary = json.loads((method / "results.json").read_text())
    runs = [json.loads((method / f"run_{i}" / "results.json").read_text()) for i in (0, 1)]
    assert summary["runs"] == runs
    assert [(r["seed"], r["split_seed"]) for r in runs] == [(0, 0), (1, 1)]
    assert runs[0]["split_hash"] != runs[1]["split_hash"]
    errors = [r["test_error"] for r in runs]
    assert summary["test_error_mean"] == pytest.approx(np.mean(errors))
    assert summary["test_error_std"] == pytest.approx(np.std(errors, ddof=1))
    for i in (0, 1):
        names = {p.name for p in (method / f"run_{i}").iterdir()}
        assert {"config.json", "split.json", "model.json", "metrics.jsonl", "tensorboard",
                "checkpoints", "results.json"} <= names
        config = json.loads((method / f"run_{i}" / "config.json").read_text())
        assert (config["seed"], config["num_parallel_runs"]) == (i, 1)
    text = report.report(str(parallel_root), "digits")
    meta_row = next(line for line in text.splitlines() if line.startswith("| Meta-Semi |"))
    assert f"{report.mean_std(errors)} (2) |" in meta_row


def test_run_configs_take_consecutive_seeds_and_splits():
    config = load_config("digits", "50")
    config.seed, config.split_seed, config.num_parallel_runs = 3, 7, 4
    runs = [run_set.run_config(config, i) for i in range(4)]
    assert [(c.seed, c.split_seed, c.num_parallel_runs) for c in runs] == [
        (3, 7, 1), (4, 8, 1), (5, 9, 1), (6, 10, 1)]
    config.parallel_runs_share_split = True
    assert [run_set.run_config(config, i).split_seed for i in range(4)] == [7] * 4


def test_a_set_places_each_runs_pools_once(tmp_path):
    """A set's pools reach the devices stacked along the run axis and nowhere else (a
    run's own pools placed as well would double the set's data), and each run's source
    gives its own pools back."""
    config = load_config("digits", "50")
    config.num_parallel_runs = 2
    ssls = [load_checked_data(run_set.run_config(config, i), str(tmp_path / str(i)))
            for i in range(2)]
    pool_shape = ssls[0].unlabeled_images.shape
    assert ssls[1].unlabeled_images.shape == pool_shape

    def placed_pools(shape):
        return sum(x.shape == shape for x in jax.live_arrays())

    single_before, stacked_before = placed_pools(pool_shape), placed_pools((2, *pool_shape))
    axis = run_set.RunAxis(DataParallel("shard_map", make_mesh()), 2)
    data, sources = place_pools(axis, config, ssls, stream=None)
    assert data.unlabeled_images.shape == (2, *pool_shape)
    assert placed_pools((2, *pool_shape)) > stacked_before  # (with its per-device buffers)
    assert placed_pools(pool_shape) == single_before
    for ssl, source in zip(ssls, sources, strict=True):
        np.testing.assert_array_equal(source().unlabeled_images, ssl.unlabeled_images)
        np.testing.assert_array_equal(source().labeled_labels, ssl.labeled_labels)
    assert not np.array_equal(ssls[0].labeled_labels, ssls[1].labeled_labels)


def test_a_set_needs_the_replicated_pool_and_keeps_its_size(tmp_path):
    config = load_config("digits", "50")
    config.num_parallel_runs, config.unlabeled_placement = 2, "sharded"
    with pytest.raises(ConfigError, match="num_parallel_runs=2.*'replicated'"):
        check_config(config, 1)
    (tmp_path / "config.json").write_text(json.dumps({"num_parallel_runs": 2}))
    with pytest.raises(ConfigError, match="holds a set of 2 runs but "
                                          "config.num_parallel_runs=3"):
        check_same_run_count(str(tmp_path), 3)
    check_same_run_count(str(tmp_path), 2)


@pytest.mark.slow  # two more processes of a new program (CI runs it)
def test_a_set_stopped_by_sigterm_resumes_to_the_same_runs(parallel_root, tmp_path):
    args = [*QUICK_RUN, "--config.num_parallel_runs=2", f"--workdir={tmp_path}"]
    proc = start_program("meta_semi_jax.main", *args, devices=QUICK_RUN_DEVICES)
    assert proc.stderr is not None
    for line in proc.stderr:  # the first evaluation's lines: stop after step 15
        if "run_1: step 15" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in stderr
    assert not (tmp_path / "results.json").exists()
    again = run_program("meta_semi_jax.main", *args, devices=QUICK_RUN_DEVICES)
    assert again.returncode == 0, again.stderr[-3000:]
    method = parallel_root / "digits_50" / "meta_semi"
    for i in (0, 1):
        assert results_without_time(tmp_path / f"run_{i}") == results_without_time(
            method / f"run_{i}")
        assert records_without_time(tmp_path / f"run_{i}") == records_without_time(
            method / f"run_{i}")
