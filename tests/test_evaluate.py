"""The best-validation checkpoint kept by orbax, and ``python -m meta_semi_jax.evaluate``
on the shared finished quick run: it reproduces results.json on any device count."""
from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_semi_jax import checkpoint, evaluate, model_card
from meta_semi_jax.augment import normalize
from meta_semi_jax.data import digits
from meta_semi_jax.models import create_model
from tests.run_files import run_program

# On the worker that trains the shared quick run (``conftest.finished_quick_run``).
pytestmark = pytest.mark.xdist_group("quick_run")


def test_the_manager_keeps_the_latest_and_the_best_checkpoint(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path), max_to_keep=1)
    # (step, val accuracy of the evaluation at that step, or None without one)
    history = [(1, 50.0), (2, 70.0), (3, 60.0), (4, None), (5, 70.0)]
    best_step, best = 0, -1.0
    for step, val in history:
        if val is not None and val > best:
            best_step, best = step, val
        checkpoint.save(manager, step, {"w": np.full(3, step, np.float32)}, {"step": step},
                        checkpoint.best_metrics(step, best_step, best))
        manager.wait_until_finished()
    assert manager.all_steps() == [2, 5]  # the best (first to reach 70 %) and the latest
    assert checkpoint.chosen_step(manager, "best") == 2
    assert checkpoint.chosen_step(manager, "latest") == 5
    assert checkpoint.chosen_step(manager, "5") == 5
    for which, words in (("3", "the kept steps are [2, 5]"), ("final", "best, latest or a")):
        with pytest.raises(checkpoint.CheckpointChoiceError, match=re.escape(words)):
            checkpoint.chosen_step(manager, which)
    manager.close()


def test_checkpoints_without_best_metrics_name_no_best(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path), max_to_keep=2)
    # A checkpoint saved before any evaluation ranks below every best.
    checkpoint.save(manager, 1, {"w": np.zeros(2)}, {"step": 1},
                    checkpoint.best_metrics(1, 0, -1.0))
    manager.wait_until_finished()
    with pytest.raises(checkpoint.CheckpointChoiceError, match="--checkpoint=latest"):
        checkpoint.chosen_step(manager, "best")
    manager.close()


@pytest.fixture(scope="module")
def reports(finished_quick_run):
    """Reports of the quick run (trained on 2 devices): the evaluate program's on 1
    device, and ``evaluate.evaluate``'s in this process, on its 4 devices:
    {(checkpoint, split, devices): report}."""
    workdir = finished_quick_run.workdir
    proc = run_program("meta_semi_jax.evaluate", f"--workdir={workdir}",
                       "--checkpoint=best", "--split=test", devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint best (step " in proc.stdout
    found = {("best", "test", 1): json.loads(
        (workdir / evaluate.report_name("best", "test")).read_text())}
    for which, split in (("latest", "test"), ("best", "validation")):
        report = json.loads(json.dumps(evaluate.evaluate(str(workdir), which, split)))
        assert report["num_devices"] == 4
        assert report == json.loads((workdir / evaluate.report_name(which, split)).read_text())
        found[which, split, 4] = report
    return found


def test_evaluate_reproduces_results_json_on_other_device_counts(finished_quick_run,
                                                                 reports):
    results = json.loads((finished_quick_run.workdir / "results.json").read_text())
    best = reports["best", "test", 1]
    assert best["step"] == results["best_val_step"]
    assert best["error"] == results["best_val_test_error"]
    assert reports["latest", "test", 4]["step"] == results["step"]
    assert reports["latest", "test", 4]["error"] == results["test_error"]
    assert reports["best", "validation", 4]["accuracy"] == results["best_val_accuracy"]
    assert (finished_quick_run.workdir / "checkpoints" / str(results["best_val_step"])).is_dir()


def test_the_report_matches_the_models_own_predictions(finished_quick_run, reports):
    """Confusion matrix, per-class accuracy and mean loss against the best checkpoint's
    EMA model applied directly to the test images."""
    workdir = finished_quick_run.workdir
    card = model_card.read_model_json(str(workdir))
    _, variables = checkpoint.ema_variables(str(workdir), "best")
    model = create_model(card.model, card.num_classes)
    images, labels = digits.load_digits_arrays()[2:4]
    logits = jax.jit(model.apply, static_argnames="train")(
        variables, normalize(images, np.asarray(card.mean, np.float32),
                             np.asarray(card.std, np.float32)), train=False)
    predicted = np.asarray(jnp.argmax(logits, -1))
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    report = reports["best", "test", 1]
    assert np.array_equal(np.asarray(report["confusion_matrix"]), confusion)
    assert report["count"] == len(labels) == 500
    expected_per_class = [100.0 * np.mean(predicted[labels == c] == c) for c in range(10)]
    np.testing.assert_allclose(report["per_class_accuracy"], expected_per_class)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(report["mean_loss"], float(loss), rtol=1e-5)
    assert report["top5_accuracy"] is None  # 10 classes
    assert report["class_names"] == list("0123456789")


@pytest.mark.parametrize("args, words", [
    (("--checkpoint=7",), "--checkpoint=7: no checkpoint of that step; the kept steps are"),
    (("--split=train",), "--split=train: value should be one of <test|validation>"),
    (("--checkpoint=last",), "--checkpoint=last: it must be best, latest or a step number"),
])
def test_bad_choices_are_one_line_with_exit_status_2(finished_quick_run, args, words):
    proc = run_program("meta_semi_jax.evaluate", f"--workdir={finished_quick_run.workdir}",
                       *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_a_missing_workdir_is_one_line(tmp_path):
    proc = run_program("meta_semi_jax.evaluate", f"--workdir={tmp_path / 'missing'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --workdir={tmp_path / 'missing'} is not a directory"
