"""Datasets and the semi-supervised split, as host arrays ready to be put on the device.

``dataset_facts`` reads a dataset's class count and image shape from metadata alone
(for the checks that run before anything else); ``load_raw`` reads the arrays (tfds,
Fashion-MNIST's IDX files, or the user's own ``npz:``/``folder:`` data);
``split_dataset`` applies the SSL protocol of Appendix C.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from meta_semi_jax.data import digits, fashion_mnist, stl10_folds, tfds_data, user_data
from meta_semi_jax.data.errors import DataError
from meta_semi_jax.data.split import SplitIndices, fold_split, max_labels_per_class, ssl_split

BUILTIN_DATASETS: tuple[str, ...] = ("digits", *tfds_data.TFDS_SOURCES)
DATASET_CHOICES = ", ".join(BUILTIN_DATASETS) + ", tfds:<name>, npz:<path>, folder:<dir>"


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """A dataset's arrays as read: uint8 NHWC images and int32 labels."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    extra_unlabeled_images: np.ndarray | None = None  # STL-10's 100,000 unlabeled images


@dataclasses.dataclass(frozen=True)
class SSLData:
    """A split dataset on the host. ``unlabeled_labels`` are never given to training;
    they exist for diagnostics only (-1 where unknown)."""
    labeled_images: np.ndarray
    labeled_labels: np.ndarray
    unlabeled_images: np.ndarray
    unlabeled_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    split: SplitIndices


def is_known_dataset(dataset: str) -> bool:
    """A built-in dataset's name, ``tfds:<name>``, ``npz:<path>`` or ``folder:<dir>``."""
    return (dataset in BUILTIN_DATASETS or user_data.is_user_dataset(dataset)
            or (dataset.startswith(tfds_data.TFDS_PREFIX)
                and len(dataset) > len(tfds_data.TFDS_PREFIX)))


def _source(config: ml_collections.ConfigDict) -> tfds_data.TfdsSource:
    return tfds_data.tfds_source(config.dataset, config.tfds_train_split,
                                 config.tfds_test_split)


def dataset_facts(config: ml_collections.ConfigDict) -> tuple[int, tuple[int, ...]]:
    """(number of classes, image shape) of ``config.dataset``, from metadata only (a
    user's ``npz:`` archive is read and checked, a ``folder:``'s image headers)."""
    if config.dataset == "digits":
        return digits.NUM_CLASSES, digits.IMAGE_SHAPE
    if config.dataset == fashion_mnist.NAME:
        return fashion_mnist.NUM_CLASSES, fashion_mnist.IMAGE_SHAPE
    if user_data.is_user_dataset(config.dataset):
        return user_data.facts(config.dataset)
    return tfds_data.image_classification_info(config.dataset, _source(config),
                                               config.data_dir)


def load_raw(config: ml_collections.ConfigDict) -> RawDataset:
    """Reads every split ``config.dataset`` needs."""
    if config.dataset == "digits":
        train_x, train_y, test_x, test_y = digits.load_digits_arrays()
        return RawDataset(train_x, train_y, test_x, test_y, digits.NUM_CLASSES)
    if user_data.is_user_dataset(config.dataset):
        return RawDataset(*user_data.read(config.dataset))
    if config.dataset == fashion_mnist.NAME:
        return load_fashion_mnist(config)
    source = _source(config)
    num_classes, _ = dataset_facts(config)
    train_x, train_y = tfds_data.read_split(config.dataset, source, source.train_split,
                                            config.data_dir)
    test_x, test_y = tfds_data.read_split(config.dataset, source, source.test_split,
                                          config.data_dir)
    extra = None
    if source.extra_unlabeled_split:
        extra, _ = tfds_data.read_split(config.dataset, source, source.extra_unlabeled_split,
                                        config.data_dir)
    return RawDataset(train_x, train_y, test_x, test_y, num_classes, extra)


def load_fashion_mnist(config: ml_collections.ConfigDict) -> RawDataset:
    """Fashion-MNIST from its IDX files where ``fashion_mnist.idx_dir`` holds them, else
    through tfds, in the files' order either way (so both give the same split)."""
    directory = fashion_mnist.idx_dir(config.data_dir)
    if fashion_mnist.has_idx_files(directory):
        return RawDataset(*fashion_mnist.read_idx_split(directory, "train"),
                          *fashion_mnist.read_idx_split(directory, "test"),
                          fashion_mnist.NUM_CLASSES)
    source = _source(config)
    try:
        train_x, train_y = tfds_data.read_split_in_file_order(
            config.dataset, source, source.train_split, config.data_dir)
        test_x, test_y = tfds_data.read_split_in_file_order(
            config.dataset, source, source.test_split, config.data_dir)
    except DataError as e:
        raise DataError(fashion_mnist.missing_message(directory, str(e))) from None
    return RawDataset(train_x, train_y, test_x, test_y, fashion_mnist.NUM_CLASSES)


def channel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images (Appendix C's normalisation)."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)


def fold_size(config: ml_collections.ConfigDict) -> int | None:
    """STL-10 takes its labeled set from a predefined fold of 1,000 images (MixMatch's
    protocol); other datasets sample ``num_labels`` (None)."""
    return stl10_folds.FOLD_SIZE if config.dataset == "stl10" else None


def split_indices(config: ml_collections.ConfigDict, raw: RawDataset) -> SplitIndices:
    """The split of ``raw``'s training pool that ``config`` asks for."""
    if fold_size(config) is not None:
        try:
            labeled = stl10_folds.load_fold_positions(
                tfds_data.resolve_data_dir(config.data_dir), config.fold,
                len(raw.train_labels))
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
        return fold_split(raw.train_labels, labeled, raw.num_classes, config.num_validation,
                          config.split_seed)
    return ssl_split(raw.train_labels, raw.num_classes, config.num_labels,
                     config.num_validation, config.split_seed,
                     config.unlabeled_includes_labeled)


def split_dataset(raw: RawDataset, split: SplitIndices) -> SSLData:
    """Applies ``split`` to the training pool; STL-10's extra unlabeled images join the
    unlabeled set. Normalisation statistics come from the whole training pool."""
    unlabeled_images = raw.train_images[split.unlabeled]
    unlabeled_labels = raw.train_labels[split.unlabeled]
    if raw.extra_unlabeled_images is not None:
        unlabeled_images = np.concatenate([unlabeled_images, raw.extra_unlabeled_images])
        unlabeled_labels = np.concatenate(
            [unlabeled_labels, np.full(len(raw.extra_unlabeled_images), -1, np.int32)])
    mean, std = channel_mean_std(raw.train_images)
    return SSLData(
        labeled_images=raw.train_images[split.labeled],
        labeled_labels=raw.train_labels[split.labeled],
        unlabeled_images=unlabeled_images, unlabeled_labels=unlabeled_labels,
        val_images=raw.train_images[split.validation],
        val_labels=raw.train_labels[split.validation],
        test_images=raw.test_images, test_labels=raw.test_labels,
        num_classes=raw.num_classes, mean=mean, std=std, split=split)


__all__ = ["BUILTIN_DATASETS", "DATASET_CHOICES", "DataError", "RawDataset", "SSLData",
           "SplitIndices", "channel_mean_std", "dataset_facts", "fold_size", "is_known_dataset",
           "load_raw", "max_labels_per_class", "split_dataset", "split_indices", "ssl_split"]
