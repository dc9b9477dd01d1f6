"""``DIR/model.json``: what a trained model needs besides its weights, written by the
training program next to the checkpoints when a run starts.

It names the model (``config.model``), its number of classes, the image shape (H, W, C)
it takes, the per-channel mean and std that normalise its inputs (the model sees
``(pixels - mean) / std`` of the raw 0-255 pixels, ``augment.normalize``, with
``SSLData.mean`` / ``.std`` computed from the training pool, so a loader needs no
training data), the dataset, and the class names
where the data source has them (None where it does not: ``npz:`` archives).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from meta_semi_jax.data import SSLData, digits, fashion_mnist, tfds_data, user_data
from meta_semi_jax.run_dir import write_json

MODEL_JSON = "model.json"


class ModelCardError(ValueError):
    """A workdir whose model.json is missing or unreadable; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The contents of model.json."""
    model: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    class_names: tuple[str, ...] | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ModelCard:
        names = record["class_names"]
        return cls(model=record["model"], num_classes=int(record["num_classes"]),
                   image_shape=tuple(record["image_shape"]), mean=tuple(record["mean"]),
                   std=tuple(record["std"]), dataset=record["dataset"],
                   class_names=None if names is None else tuple(names))


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The class names of ``config.dataset`` where its source names them: the digits,
    Fashion-MNIST's ten names, a ``folder:``'s class folders, tfds' ClassLabel names;
    None for ``npz:`` archives."""
    dataset = config.dataset
    if dataset == "digits":
        return tuple(str(digit) for digit in range(digits.NUM_CLASSES))
    if dataset == fashion_mnist.NAME:
        return fashion_mnist.CLASS_NAMES
    if dataset.startswith(user_data.FOLDER_PREFIX):
        root = os.path.expanduser(dataset[len(user_data.FOLDER_PREFIX):])
        return tuple(user_data.class_folders(os.path.join(root, "train")))
    if tfds_data.is_tfds_dataset(dataset):
        source = tfds_data.tfds_source(dataset, config.tfds_train_split,
                                       config.tfds_test_split)
        return tuple(tfds_data.class_label_names(source, config.data_dir))
    return None


def card_for_run(config: ml_collections.ConfigDict, ssl: SSLData) -> ModelCard:
    """The model card of a run of ``config`` on its split data ``ssl``."""
    height, width, channels = ssl.labeled_images.shape[1:]
    return ModelCard(model=config.model, num_classes=ssl.num_classes,
                     image_shape=(int(height), int(width), int(channels)),
                     mean=tuple(float(m) for m in ssl.mean),
                     std=tuple(float(s) for s in ssl.std),
                     dataset=config.dataset, class_names=class_names(config))


def write_model_json(workdir: str, card: ModelCard) -> None:
    """Writes ``workdir/model.json`` (process 0 only)."""
    write_json(workdir, MODEL_JSON, card.to_json())


def read_model_json(workdir: str) -> ModelCard:
    """The model card of the run in ``workdir``; a workdir without one (a run that
    predates model.json) raises ``ModelCardError``."""
    path = os.path.join(workdir, MODEL_JSON)
    if not os.path.isdir(workdir):
        raise ModelCardError(f"--workdir={workdir} is not a directory")
    if not os.path.exists(path):
        raise ModelCardError(
            f"{workdir} has no {MODEL_JSON}: the run predates it; rerun its training "
            f"command with the same --workdir (it resumes from the latest checkpoint and "
            f"writes {MODEL_JSON}) and try again")
    try:
        with open(path) as f:
            return ModelCard.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelCardError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
