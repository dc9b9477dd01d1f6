"""``python -m meta_semi_jax.predict`` on the shared finished quick run."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from meta_semi_jax import checkpoint, model_card, predict
from meta_semi_jax.augment import normalize
from meta_semi_jax.data import digits
from meta_semi_jax.models import create_model
from tests.run_files import run_program

# On the worker that trains the shared quick run (``conftest.finished_quick_run``).
pytestmark = pytest.mark.xdist_group("quick_run")

NUM_IMAGES = 12
NUM_PNGS = 4


def best_ema_variables(workdir) -> dict:
    """The EMA model of the checkpoint of results.json's best validation accuracy, read
    with orbax directly."""
    manager = ocp.CheckpointManager(checkpoint.checkpoint_dir(str(workdir)),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = json.loads((workdir / "results.json").read_text())["best_val_step"]
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
    manager.close()
    return {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}


def ema_probabilities(workdir, images: np.ndarray) -> np.ndarray:
    """Softmax of the logits of the best checkpoint's EMA model, computed directly."""
    card = model_card.read_model_json(str(workdir))
    ema = best_ema_variables(workdir)
    inputs = normalize(images, np.asarray(card.mean, np.float32),
                       np.asarray(card.std, np.float32))
    model = create_model(card.model, card.num_classes)
    logits = jax.jit(model.apply, static_argnames="train")(ema, inputs, train=False)
    return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))


def test_predictions_are_the_best_ema_models_probabilities(finished_quick_run, tmp_path):
    images = digits.load_digits_arrays()[2][:NUM_IMAGES]  # uint8 (N, 8, 8, 1)
    archive = tmp_path / "digits.npz"
    np.savez(archive, images=images[..., 0])  # NHW: one channel
    pngs = [tmp_path / f"digit{i}.png" for i in range(NUM_PNGS)]
    for path, image in zip(pngs, images, strict=False):
        Image.fromarray(image[..., 0]).save(path)
    output = tmp_path / "predictions.jsonl"
    proc = run_program("meta_semi_jax.predict", f"--workdir={finished_quick_run.workdir}",
                       f"--inputs={archive}", *(f"--inputs={path}" for path in pngs),
                       f"--output={output}")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["input"] for line in lines] == (
        [f"{archive}[{i}]" for i in range(NUM_IMAGES)] + [str(path) for path in pngs])
    expected = ema_probabilities(finished_quick_run.workdir, images)
    probabilities = np.asarray([line["probabilities"] for line in lines])
    np.testing.assert_allclose(probabilities[:NUM_IMAGES], expected, rtol=0, atol=1e-6)
    classes = [line["class"] for line in lines]
    assert classes[:NUM_IMAGES] == np.argmax(expected, axis=-1).tolist()
    assert [line["class_name"] for line in lines] == [str(c) for c in classes]
    # The PNG files hold the archive's first images: the same output.
    for png, npz in zip(lines[NUM_IMAGES:], lines[:NUM_PNGS], strict=True):
        assert {**png, "input": None} == {**npz, "input": None}


def refusal(workdir, tmp_path, *inputs: str) -> str:
    """Runs the program on ``inputs``; checks exit status 2, one stderr line and no
    output file, and returns the line."""
    output = tmp_path / "predictions.jsonl"
    proc = run_program("meta_semi_jax.predict", f"--workdir={workdir}",
                       *(f"--inputs={path}" for path in inputs), f"--output={output}")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert not output.exists()
    return lines[0]


def test_a_wrong_image_shape_is_one_line(finished_quick_run, tmp_path):
    workdir = str(finished_quick_run.workdir)
    wide, rgb = tmp_path / "wide.png", tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(wide)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    archive = tmp_path / "rgb.npz"
    np.savez(archive, np.zeros((2, 8, 8, 3), np.uint8))  # its only array
    assert refusal(workdir, tmp_path, good, wide) == (
        f"error: {wide} is an image of shape (8, 9, 1) (H, W, C); the model takes (8, 8, 1)")
    for path, shape in ((rgb, "is an image of shape (8, 8, 3)"),
                        (archive, "holds images of shape (8, 8, 3)")):
        with pytest.raises(predict.PredictError) as raised:
            predict.predict(workdir, [str(good), str(path)])
        assert str(raised.value) == f"{path} {shape} (H, W, C); the model takes (8, 8, 1)"


def test_missing_or_unreadable_inputs_are_one_line(finished_quick_run, tmp_path):
    workdir = str(finished_quick_run.workdir)
    missing = tmp_path / "missing.png"
    assert refusal(workdir, tmp_path, missing) == f"error: --inputs: no such file {missing}"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((2, 8, 8, 1), np.float32))
    for path, message in ((not_an_image, "cannot read"), (floats, "dtype float32")):
        with pytest.raises(predict.PredictError, match=message):
            predict.predict(workdir, [str(path)])


def test_fast_swa_runs_are_refused(finished_quick_run, tmp_path):
    config = json.loads((finished_quick_run.workdir / "config.json").read_text())
    config["algorithm"] = "mean_teacher_fast_swa"
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(finished_quick_run.workdir / "model.json", tmp_path / "model.json")
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    with pytest.raises(checkpoint.EvaluatedModelError, match="prediction of .* not supported"):
        predict.predict(str(tmp_path), [str(image)])
