"""model.json and ``python -m meta_semi_jax.export`` on the shared finished quick run."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from meta_semi_jax import checkpoint, export, model_card
from meta_semi_jax.augment import normalize
from meta_semi_jax.data import channel_mean_std, digits
from meta_semi_jax.models import create_model
from tests.run_files import load_config, run_program

# On the worker that trains the shared quick run (``conftest.finished_quick_run``).
pytestmark = pytest.mark.xdist_group("quick_run")


def checkpoint_state(workdir, which: str) -> dict:
    """The raw train state of checkpoint ``which`` (best or latest), read with orbax
    directly: the best is the step of results.json's best validation accuracy."""
    manager = ocp.CheckpointManager(checkpoint.checkpoint_dir(str(workdir)),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    results = json.loads((workdir / "results.json").read_text())
    step = {"best": results["best_val_step"], "latest": manager.latest_step()}[which]
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
    manager.close()
    return state


def test_model_json_describes_the_run(finished_quick_run):
    card = model_card.read_model_json(str(finished_quick_run.workdir))
    train_images = digits.load_digits_arrays()[0]
    mean, std = channel_mean_std(train_images)
    assert (card.model, card.num_classes, card.dataset) == ("small_cnn", 10, "digits")
    assert card.image_shape == train_images.shape[1:] == (8, 8, 1)
    assert np.array_equal(np.asarray(card.mean, np.float32), mean)
    assert np.array_equal(np.asarray(card.std, np.float32), std)
    assert card.class_names == tuple("0123456789")


def test_class_names_come_from_the_data_source(tmp_path):
    for name in ("boot", "bag"):
        (tmp_path / "images" / "train" / name).mkdir(parents=True)
    config = load_config("digits", "50")
    names = {}
    for dataset in (f"folder:{tmp_path / 'images'}", "fashion_mnist", "tfds:fashion_mnist",
                    f"npz:{tmp_path / 'x.npz'}"):
        config.dataset, config.data_dir = dataset, str(tmp_path / "tfds")
        names[dataset.rsplit(":", 1)[0]] = model_card.class_names(config)
    assert names["folder"] == ("bag", "boot")
    assert names["fashion_mnist"][0] == "T-shirt/top" and len(names["fashion_mnist"]) == 10
    assert names["tfds"] == names["fashion_mnist"]  # tfds' ClassLabel names, from its metadata
    assert names["npz"] is None


def test_a_workdir_without_model_json_is_refused(tmp_path):
    with pytest.raises(model_card.ModelCardError, match="predates"):
        model_card.read_model_json(str(tmp_path))


@pytest.fixture(scope="module")
def exported(finished_quick_run, tmp_path_factory):
    """The quick run exported by the command line: (process, path of the export)."""
    output = tmp_path_factory.mktemp("export") / "model.msgpack"
    proc = run_program("meta_semi_jax.export", f"--workdir={finished_quick_run.workdir}",
                       f"--output={output}")
    return proc, output


def test_the_export_gives_the_logits_of_the_checkpoints_ema_model(finished_quick_run,
                                                                   exported):
    proc, output = exported
    assert proc.returncode == 0, proc.stderr
    assert export.card_path(str(output)) == str(output.with_suffix(".json"))
    card = model_card.ModelCard.from_json(json.loads(output.with_suffix(".json").read_text()))
    assert card == model_card.read_model_json(str(finished_quick_run.workdir))
    model = create_model(card.model, card.num_classes)
    images = digits.load_digits_arrays()[2][:16]
    template = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), np.zeros((1, *card.image_shape), np.float32), train=False)
    loaded = serialization.from_bytes(template, output.read_bytes())
    inputs = normalize(images, np.asarray(card.mean, np.float32),
                       np.asarray(card.std, np.float32))
    apply = jax.jit(model.apply, static_argnames="train")
    state = checkpoint_state(finished_quick_run.workdir, "best")  # export's default
    ema = {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
    student = {"params": state["params"], "batch_stats": state["batch_stats"]}
    logits = np.asarray(apply(loaded, inputs, train=False))
    assert np.array_equal(logits, np.asarray(apply(ema, inputs, train=False)))
    assert not np.array_equal(logits, np.asarray(apply(student, inputs, train=False)))


def test_bad_input_is_one_line_with_exit_status_2(tmp_path):
    output = tmp_path / "out" / "model.msgpack"
    output.parent.mkdir()
    proc = run_program("meta_semi_jax.export", f"--workdir={tmp_path / 'missing'}",
                       f"--output={output}")
    assert proc.returncode == 2, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: --workdir={tmp_path / 'missing'} is not a directory"]
    assert not any(output.parent.iterdir())


def test_a_workdir_without_checkpoints_or_model_json_is_refused(finished_quick_run, tmp_path):
    without_checkpoints = tmp_path / "without_checkpoints"
    without_checkpoints.mkdir()
    for name in ("model.json", "config.json"):
        shutil.copy(finished_quick_run.workdir / name, without_checkpoints / name)
    output = tmp_path / "model.msgpack"
    with pytest.raises(checkpoint.CheckpointChoiceError, match="has no checkpoints"):
        export.export(str(without_checkpoints), str(output))
    (without_checkpoints / "model.json").unlink()
    with pytest.raises(model_card.ModelCardError, match="predates it; rerun its training command"):
        export.export(str(without_checkpoints), str(output))
    assert not output.exists() and not output.with_suffix(".json").exists()


def test_fast_swa_runs_are_refused(finished_quick_run, tmp_path):
    config = json.loads((finished_quick_run.workdir / "config.json").read_text())
    config["algorithm"] = "mean_teacher_fast_swa"
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(finished_quick_run.workdir / "model.json", tmp_path / "model.json")
    with pytest.raises(checkpoint.EvaluatedModelError, match="export of .* not supported yet"):
        export.export(str(tmp_path), str(tmp_path / "model.msgpack"))
