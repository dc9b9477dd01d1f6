"""Datasets and the semi-supervised split, as host arrays ready to be put on the device."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from meta_semi_jax.data import digits
from meta_semi_jax.data.split import SplitIndices, max_labels_per_class, ssl_split

RawArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the program needs to know of a dataset before loading it."""
    num_classes: int
    image_shape: tuple[int, int, int]
    load: Callable[[], RawArrays]  # (train_images, train_labels, test_images, test_labels)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(digits.NUM_CLASSES, (8, 8, 1), digits.load_digits_arrays),
}


@dataclasses.dataclass(frozen=True)
class SSLData:
    """A split dataset on the host. ``unlabeled_labels`` are never given to training;
    they exist for diagnostics only."""
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


def channel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NHWC images (Appendix C's normalisation)."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)


def split_dataset(raw: RawArrays, num_classes: int, num_labels: int, num_validation: int,
                  split_seed: int, unlabeled_includes_labeled: bool = False) -> SSLData:
    """Splits a dataset's training pool (``split.ssl_split``); normalisation statistics
    come from the whole training pool."""
    train_x, train_y, test_x, test_y = raw
    split = ssl_split(train_y, num_classes, num_labels, num_validation, split_seed,
                      unlabeled_includes_labeled)
    mean, std = channel_mean_std(train_x)
    return SSLData(
        labeled_images=train_x[split.labeled], labeled_labels=train_y[split.labeled],
        unlabeled_images=train_x[split.unlabeled], unlabeled_labels=train_y[split.unlabeled],
        val_images=train_x[split.validation], val_labels=train_y[split.validation],
        test_images=test_x, test_labels=test_y, num_classes=num_classes,
        mean=mean, std=std, split=split)


__all__ = ["DATASETS", "DatasetSpec", "SSLData", "SplitIndices", "split_dataset",
           "max_labels_per_class", "ssl_split", "channel_mean_std"]
