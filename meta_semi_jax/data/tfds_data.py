"""The paper's datasets, and any tfds image-classification dataset, read without TensorFlow.

Prepared data is read with ``tfds.data_source`` (random access to array_record files;
no TensorFlow needed). Data that exists only as tfrecord is read with ``tfds.load``
when TensorFlow is installed. Data that is not prepared at all is reported, before
training, with the one command that prepares it (``PREPARE_COMMAND``).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from meta_semi_jax.data.errors import DataError

PREPARE_COMMAND = "python -m meta_semi_jax.data prepare {dataset} --data_dir={data_dir}"
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Where a dataset lives in tfds: its name and the splits the program reads."""
    name: str
    train_split: str = "train"
    test_split: str = "test"
    extra_unlabeled_split: str | None = None


# The paper's benchmarks (Appendix C). SVHN is tfds' ``svhn_cropped`` without "extra".
PAPER_SOURCES: dict[str, TfdsSource] = {
    "cifar10": TfdsSource("cifar10"),
    "cifar100": TfdsSource("cifar100"),
    "svhn": TfdsSource("svhn_cropped"),
    "stl10": TfdsSource("stl10", extra_unlabeled_split="unlabelled"),
}
# Every dataset this program reads through tfds by its own name; Fashion-MNIST is also
# read from its IDX files (data/fashion_mnist.py).
TFDS_SOURCES: dict[str, TfdsSource] = {**PAPER_SOURCES,
                                       "fashion_mnist": TfdsSource("fashion_mnist")}


def is_tfds_dataset(dataset: str) -> bool:
    return dataset in TFDS_SOURCES or dataset.startswith(TFDS_PREFIX)


def tfds_source(dataset: str, train_split: str = "train", test_split: str = "test") -> TfdsSource:
    """The source of a named dataset, or of ``tfds:<name>`` with the user's split names."""
    if dataset in TFDS_SOURCES:
        return TFDS_SOURCES[dataset]
    return TfdsSource(dataset[len(TFDS_PREFIX):], train_split, test_split)


def resolve_data_dir(data_dir: str | None) -> str:
    """``data_dir`` with ``~`` expanded, or tfds' default (``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``)."""
    from tensorflow_datasets.core import constants

    return os.path.expanduser(data_dir) if data_dir else constants.DATA_DIR


def image_classification_info(dataset: str, source: TfdsSource,
                              data_dir: str | None) -> tuple[int, tuple[int, ...]]:
    """(number of classes, image shape) from tfds' metadata, without reading data.

    Raises ``DataError`` for a name tfds does not know or a dataset without an
    ``image`` Image feature and a ``label`` ClassLabel feature.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(source.name, data_dir=resolve_data_dir(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"config.dataset={dataset!r}: tfds knows no dataset named "
                        f"{source.name!r}") from None
    features = builder.info.features
    image = features["image"] if "image" in features.keys() else None
    label = features["label"] if "label" in features.keys() else None
    if not isinstance(image, tfds.features.Image) or not isinstance(
            label, tfds.features.ClassLabel):
        raise DataError(f"config.dataset={dataset!r}: the program needs an 'image' Image "
                        f"feature and a 'label' ClassLabel feature; {source.name} has "
                        f"{', '.join(sorted(features.keys()))}")
    return label.num_classes, tuple(image.shape)


def class_label_names(source: TfdsSource, data_dir: str | None) -> list[str]:
    """The names of the ``label`` ClassLabel feature, from tfds' metadata (tfds names
    unnamed classes "0", "1", ...); ``image_classification_info`` has checked it."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(source.name, data_dir=resolve_data_dir(data_dir))
    return list(builder.info.features["label"].names)


def missing_data_message(dataset: str, source: TfdsSource, split: str, data_dir: str) -> str:
    return (f"dataset {dataset!r} (tfds {source.name!r}, split {split!r}) is not prepared "
            f"under {data_dir}; prepare it once with: "
            + PREPARE_COMMAND.format(dataset=dataset, data_dir=data_dir))


def file_index_to_tfds_position(num_examples: int, split: str = "train") -> np.ndarray:
    """``p[k]``: position in the prepared tfds split of the record with key ``k``, for a
    builder that keys a split's examples 0, 1, ... (tfds writes them sorted by
    ``Hasher(salt=split).hash_key(key)``; this recomputes that order with its hasher)."""
    from tensorflow_datasets.core import hashing

    hasher = hashing.Hasher(split)
    order = sorted(range(num_examples), key=hasher.hash_key)  # keys in record order
    positions = np.empty(num_examples, np.int64)
    positions[order] = np.arange(num_examples)
    return positions


def read_split_in_file_order(dataset: str, source: TfdsSource, split: str,
                             data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A whole split of a builder that keys each example by its index in the original
    files (tfds' mnist family: Fashion-MNIST), in that file order, not tfds' record
    order, so that it equals the arrays read from the files themselves."""
    images, labels = read_split(dataset, source, split, data_dir)
    positions = file_index_to_tfds_position(len(labels), split)
    return images[positions], labels[positions]


def _arrays_from_records(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels


def _read_with_tensorflow(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    data = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, batch_size=-1,
                                   download=False))
    return np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int32)


def _tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def read_split(dataset: str, source: TfdsSource, split: str,
               data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 NHWC) and labels (int32) of one split, in the split's order."""
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    try:
        records = tfds.data_source(source.name, split=split, data_dir=data_dir,
                                   download=False)
    except Exception:  # tfds raises several types for data it cannot open
        if not tfds.builder(source.name, data_dir=data_dir).is_prepared():
            raise DataError(missing_data_message(dataset, source, split, data_dir)) from None
        if not _tensorflow_available():
            raise DataError(
                f"dataset {dataset!r} is prepared under {data_dir} as tfrecord, which only "
                f"TensorFlow reads: pip install tensorflow-cpu, or prepare it as array_record "
                f"in another data_dir with: "
                + PREPARE_COMMAND.format(dataset=dataset, data_dir="NEW_DIR")) from None
        return _read_with_tensorflow(source.name, split, data_dir)
    return _arrays_from_records([records[i] for i in range(len(records))])
