"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images, shipped with scikit-learn.

The embedded default dataset, usable offline. A fixed, class-stratified test set of
50 images per class is held out once (independent of ``split_seed``, like an official
test split); the remaining 1,297 images form the training pool.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
TEST_PER_CLASS = 50
_TEST_SEED = 20240601  # fixes the test split for every run and split seed


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels); images uint8 NHWC in 0..16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(_TEST_SEED).permutation(len(labels))
    test = np.sort(np.concatenate(
        [order[labels[order] == c][:TEST_PER_CLASS] for c in range(NUM_CLASSES)]))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return images[train], labels[train], images[test], labels[test]
