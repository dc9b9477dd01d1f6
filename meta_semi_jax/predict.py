"""Command line: ``python -m meta_semi_jax.predict --workdir=DIR --inputs=PATH
[--inputs=PATH ...] [--output=FILE] [--checkpoint=best|latest|STEP]``.

Classifies images with the evaluated model of a checkpoint in ``DIR`` (by default the
best-validation one, ``checkpoint.chosen_step``; the EMA model, as ``export`` writes
it), normalised with the run's own mean and std (``model.json``, ``model_card``).
Each ``--inputs`` is an image file (PNG or JPEG, read with Pillow: grey images with one
channel, the others as RGB) or a NumPy ``.npz`` archive of uint8 images, NHWC or NHW
(one channel), under the key ``images`` or as its only array; an archive's images are
named ``PATH[i]``. Writes one JSON line per image, in the order of the inputs, to
``FILE`` (stdout without ``--output``)::

    {"input": "digit.png", "class": 3, "class_name": "3", "probabilities": [...]}

``class`` is the most probable class, ``class_name`` its name in ``model.json`` (null
where the data source names none: ``npz:`` runs) and ``probabilities`` the softmax of
the model's logits, in float32.

Runs whose evaluated model is a weight average (Mean Teacher + fast-SWA) are refused,
as by ``export``. A mistake (no workdir, no checkpoint of that name, a missing or
unreadable input, an image whose shape is not the model's (H, W, C)) ends the program
with one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from meta_semi_jax import checkpoint, cli
from meta_semi_jax.augment import normalize
from meta_semi_jax.data import user_data
from meta_semi_jax.model_card import ModelCard, ModelCardError, read_model_json
from meta_semi_jax.models import create_model
from meta_semi_jax.run_dir import RunDirError, read_config

BATCH_SIZE = 256
NPZ_SUFFIX = ".npz"
NPZ_KEY = "images"

# One input path's images: (their names in the output, uint8 NHWC images).
Input = tuple[list[str], np.ndarray]


class PredictError(ValueError):
    """An input or output that cannot be used; the message is one line."""


def npz_images(path: str) -> np.ndarray:
    """The array ``images`` of the archive ``path``, or its only array."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile):
        archive = None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PredictError(f"{path} is not a NumPy .npz archive (numpy.savez)")
    with archive:
        keys = archive.files
        if NPZ_KEY not in keys and len(keys) != 1:
            raise PredictError(f"{path} holds {', '.join(keys) or 'no arrays'}; it must hold "
                               f"the array {NPZ_KEY} or exactly one array")
        key = NPZ_KEY if NPZ_KEY in keys else keys[0]
        try:
            return archive[key]
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise PredictError(f"{path}: cannot read {key}: {e}") from None


def read_npz(path: str) -> Input:
    """An archive's images as NHWC, named ``PATH[i]``."""
    images = npz_images(path)
    allowed = "images must be uint8, of shape (N, H, W, C) or (N, H, W) (one channel)"
    if images.dtype != np.uint8:
        raise PredictError(f"{path} holds images of dtype {images.dtype}; {allowed}")
    if images.ndim not in (3, 4):
        raise PredictError(f"{path} holds an array of shape {images.shape}; {allowed}")
    images = images if images.ndim == 4 else images[..., None]
    return [f"{path}[{i}]" for i in range(len(images))], images


def read_image_file(path: str, channels: int) -> Input:
    """One image file as a batch of one (``user_data.read_image``); for a model of three
    channels a grey image becomes RGB, as a ``folder:`` dataset with colour images
    turns its grey ones (an RGB image for a one-channel model is refused)."""
    try:
        image = user_data.read_image(path, "RGB" if channels == 3 else None)
    except ValueError as e:
        raise PredictError(str(e)) from None
    except OSError:
        raise PredictError(f"cannot read {path} as an image; inputs are PNG or JPEG files "
                           f"or {NPZ_SUFFIX} archives") from None
    return [path], image[None]


def read_input(path: str, image_shape: tuple[int, int, int]) -> Input:
    """The images of one input path, checked against the model's (H, W, C)."""
    if not os.path.isfile(path):
        raise PredictError(f"--inputs: no such file {path}")
    names, images = (read_npz(path) if path.lower().endswith(NPZ_SUFFIX)
                     else read_image_file(path, image_shape[-1]))
    if images.shape[1:] != image_shape:
        holds = "holds images of" if path.lower().endswith(NPZ_SUFFIX) else "is an image of"
        raise PredictError(f"{path} {holds} shape {images.shape[1:]} (H, W, C); the model "
                           f"takes {image_shape}")
    return names, images


def read_inputs(paths: list[str], image_shape: tuple[int, int, int]
                ) -> tuple[list[str], np.ndarray]:
    """The names and images (uint8 NHWC) of all inputs, in order."""
    if not paths:
        raise PredictError("no inputs: give each one as --inputs=PATH")
    inputs = [read_input(path, image_shape) for path in paths]
    names = [name for input_names, _ in inputs for name in input_names]
    return names, np.concatenate([images for _, images in inputs])


def probability_fn(card: ModelCard) -> Callable[[Any, jax.typing.ArrayLike], jax.Array]:
    """The jitted ``(variables, uint8 images) -> float32 class probabilities`` of the
    card's model, on images normalised with the card's mean and std."""
    model = create_model(card.model, card.num_classes)
    mean, std = np.asarray(card.mean, np.float32), np.asarray(card.std, np.float32)

    def probabilities(variables: Any, images: jax.Array) -> jax.Array:
        logits = model.apply(variables, normalize(images, mean, std), train=False)
        return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return jax.jit(probabilities)


def classify(card: ModelCard, variables: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """The class probabilities (float32, (N, classes)) of ``images``, in batches of
    ``BATCH_SIZE`` (fewer when there are fewer images); the last batch is padded, so that
    one program is compiled."""
    if not len(images):
        return np.zeros((0, card.num_classes), np.float32)
    probabilities = probability_fn(card)
    variables = jax.device_put(variables)
    size = min(BATCH_SIZE, len(images))
    batches = []
    for start in range(0, len(images), size):
        batch = images[start:start + size]
        padded = np.pad(batch, [(0, size - len(batch))] + [(0, 0)] * (batch.ndim - 1))
        batches.append(np.asarray(probabilities(variables, padded))[:len(batch)])
    return np.concatenate(batches)


def records(names: list[str], probabilities: np.ndarray, card: ModelCard
            ) -> list[dict[str, Any]]:
    """One ``{"input", "class", "class_name", "probabilities"}`` per image."""
    classes = np.argmax(probabilities, axis=-1)
    return [{"input": name, "class": int(label),
             "class_name": None if card.class_names is None else card.class_names[int(label)],
             "probabilities": [float(p) for p in row]}
            for name, label, row in zip(names, classes, probabilities, strict=True)]


def predict(workdir: str, inputs: list[str], which: str = "best") -> list[dict[str, Any]]:
    """Classifies the images of ``inputs`` (image files or .npz archives) with the EMA
    model of ``workdir``'s checkpoint ``which``; returns one record per image, in order.
    Raises ``PredictError``, ``ModelCardError``, ``RunDirError``,
    ``checkpoint.EvaluatedModelError`` (a weight-averaged model) or
    ``checkpoint.CheckpointChoiceError`` before any compute."""
    card = read_model_json(workdir)
    checkpoint.check_evaluated_model_is_ema(read_config(workdir), card.num_classes,
                                            "prediction")
    names, images = read_inputs(inputs, card.image_shape)
    _, variables = checkpoint.ema_variables(workdir, which)
    return records(names, classify(card, variables, images), card)


def check_output(output: str) -> None:
    """The output must be a file in a writable directory."""
    if os.path.isdir(output):
        raise PredictError(f"--output={output} is a directory; it must name a file")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise PredictError(f"--output={output}: {directory} is not a writable directory")


def write_lines(output: str | None, lines: list[str]) -> None:
    """Writes ``lines`` to ``output``, or to stdout when it is None."""
    text = "".join(f"{line}\n" for line in lines)
    if output is None:
        print(text, end="")
        return
    try:
        with open(output, "w") as f:
            f.write(text)
    except OSError as e:
        raise PredictError(f"--output={output} cannot be written: {e.strerror or e}") from None


def define_flags() -> None:
    flags.DEFINE_multi_string("inputs", None, "An image file (PNG or JPEG) or a .npz "
                              "archive of uint8 images; repeat the flag for more.")
    flags.DEFINE_string("output", None, "The JSON-lines file to write; stdout if absent.")
    cli.define_reading_flags("inputs")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.exit_with(f"unexpected arguments: {' '.join(argv[1:])} (give each input its "
                      f"own --inputs=PATH)")
    # Both flags are required (mark_flags_as_required): absl refuses None before main.
    workdir, inputs = str(flags.FLAGS.workdir), list(flags.FLAGS.inputs or [])
    output = flags.FLAGS.output
    try:
        if output is not None:
            check_output(output)
        predictions = predict(workdir, inputs, flags.FLAGS.checkpoint)
        write_lines(output, [json.dumps(record) for record in predictions])
    except (PredictError, ModelCardError, RunDirError, checkpoint.EvaluatedModelError,
            checkpoint.CheckpointChoiceError) as e:
        cli.exit_with(str(e))
    if output is not None:
        print(f"wrote {output}: one JSON line per image ({len(predictions)})")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
