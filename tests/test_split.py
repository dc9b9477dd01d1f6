"""The semi-supervised split (Appendix C: labels and validation evenly per class, the rest
unlabeled) and the embedded scikit-learn digits dataset."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from meta_semi_jax.data.digits import load_digits_arrays
from meta_semi_jax.data.split import max_labels_per_class, ssl_split

NUM_CLASSES = 10


@functools.cache
def _digits():
    return load_digits_arrays()


def _train_labels() -> np.ndarray:
    return _digits()[1]


def _check_split(split, labels, num_labels, num_validation, includes_labeled):
    lab, unl, val = (np.asarray(a) for a in split)
    n = len(labels)
    for part in (lab, unl, val):
        assert part.ndim == 1 and np.issubdtype(part.dtype, np.integer)
        assert len(np.unique(part)) == len(part), "duplicate indices"
        assert part.min(initial=0) >= 0 and part.max(initial=0) < n
    assert not set(val.tolist()) & set(lab.tolist())
    assert not set(val.tolist()) & set(unl.tolist())
    if includes_labeled:
        assert set(lab.tolist()) <= set(unl.tolist())
        assert set(unl.tolist()) | set(val.tolist()) == set(range(n))
    else:
        assert not set(lab.tolist()) & set(unl.tolist())
        assert len(lab) + len(unl) + len(val) == n
        assert set(lab.tolist()) | set(unl.tolist()) | set(val.tolist()) == set(range(n))
    np.testing.assert_array_equal(np.bincount(labels[lab], minlength=NUM_CLASSES),
                                  num_labels // NUM_CLASSES)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=NUM_CLASSES),
                                  num_validation // NUM_CLASSES)


@pytest.mark.parametrize("num_labels,num_validation", [(50, 200), (100, 100), (10, 500)])
@pytest.mark.parametrize("includes_labeled", [False, True])
def test_split_is_disjoint_covering_and_balanced(num_labels, num_validation, includes_labeled):
    """labeled / validation / unlabeled are disjoint and cover the pool (or unlabeled
    contains labeled), with exactly num_labels/10 labels and num_validation/10 validation
    examples of each class."""
    labels = _train_labels()
    split = ssl_split(labels, NUM_CLASSES, num_labels, num_validation, seed=0,
                      unlabeled_includes_labeled=includes_labeled)
    _check_split(split, labels, num_labels, num_validation, includes_labeled)


def test_split_on_imbalanced_classes_up_to_max_labels_per_class():
    """On an imbalanced pool the split stays exact per class up to the limit
    max_labels_per_class = (smallest class count) - validation per class."""
    rng = np.random.default_rng(0)
    counts = np.array([30, 22, 41, 25, 60, 18, 33, 29, 27, 50])
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), counts)).astype(np.int32)
    limit = max_labels_per_class(labels, NUM_CLASSES, num_validation=50)
    assert limit == counts.min() - 5
    split = ssl_split(labels, NUM_CLASSES, limit * NUM_CLASSES, 50, seed=3)
    _check_split(split, labels, limit * NUM_CLASSES, 50, includes_labeled=False)
    # The smallest class has nothing left to be unlabeled.
    unl = np.asarray(split.unlabeled)
    assert np.sum(labels[unl] == np.argmin(counts)) == 0
    assert max_labels_per_class(labels, NUM_CLASSES, 0) == counts.min()


def test_max_labels_per_class_on_digits():
    """Digits' smallest training class (124 of the 1,297 training images) minus 20
    validation images per class."""
    assert max_labels_per_class(_train_labels(), NUM_CLASSES, 200) == 104


def test_split_is_deterministic_per_seed_and_differs_across_seeds():
    """Same seed -> identical split and digest; seeds 0..4 (the paper's five splits) give
    five different labeled sets, validation sets and digests."""
    labels = _train_labels()
    splits = [ssl_split(labels, NUM_CLASSES, 50, 200, seed=s) for s in range(5)]
    again = ssl_split(labels, NUM_CLASSES, 50, 200, seed=2)
    for a, b in zip(splits[2], again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert splits[2].digest() == again.digest()
    assert len({s.digest() for s in splits}) == 5
    assert len({tuple(s.labeled.tolist()) for s in splits}) == 5
    assert len({tuple(s.validation.tolist()) for s in splits}) == 5


def test_digest_changes_with_any_part_of_the_split():
    """digest() is a short hex string that changes when any one index array changes,
    including moving an index, or only the boundary, between parts."""
    labels = _train_labels()
    split = ssl_split(labels, NUM_CLASSES, 50, 200, seed=0)
    d = split.digest()
    assert isinstance(d, str) and len(d) == 16 and int(d, 16) >= 0
    moved = split._replace(labeled=split.labeled[1:],
                           unlabeled=np.sort(np.append(split.unlabeled, split.labeled[0])))
    assert moved.digest() != d
    # Same concatenated indices, only the boundary between two parts moved.
    boundary = split._replace(labeled=split.labeled[:-1],
                              unlabeled=np.concatenate([split.labeled[-1:], split.unlabeled]))
    assert boundary.digest() != d
    assert split._replace(validation=split.validation[::-1]).digest() != d
    swapped = split._replace(labeled=split.validation, validation=split.labeled)
    assert swapped.digest() != d
    with_labeled = ssl_split(labels, NUM_CLASSES, 50, 200, 0, unlabeled_includes_labeled=True)
    assert with_labeled.digest() != d


def test_split_rejects_counts_not_multiple_of_classes():
    """Labels and validation must be spread evenly: 55 labels over 10 classes fail."""
    labels = _train_labels()
    with pytest.raises(ValueError):
        ssl_split(labels, NUM_CLASSES, 55, 200, seed=0)
    with pytest.raises(ValueError):
        ssl_split(labels, NUM_CLASSES, 50, 205, seed=0)


def test_digits_loader_shapes_ranges_and_fixed_test_set():
    """1,297 train + 500 test uint8 8x8x1 images in 0..16, 50 test images per class,
    all ten classes in train, and the same test set on every call."""
    train_x, train_y, test_x, test_y = load_digits_arrays()
    assert train_x.shape == (1297, 8, 8, 1) and test_x.shape == (500, 8, 8, 1)
    assert train_x.dtype == np.uint8 and test_x.dtype == np.uint8
    assert train_y.shape == (1297,) and test_y.shape == (500,)
    assert np.issubdtype(train_y.dtype, np.integer)
    for x in (train_x, test_x):
        assert x.min() == 0 and x.max() == 16
    np.testing.assert_array_equal(np.bincount(test_y, minlength=10), 50)
    assert set(np.unique(train_y).tolist()) == set(range(10))
    assert len(train_y) + len(test_y) == 1797
    again = load_digits_arrays()
    np.testing.assert_array_equal(again[2], test_x)
    np.testing.assert_array_equal(again[3], test_y)
    np.testing.assert_array_equal(again[0], train_x)
    # Test and train do not share images (the split is of examples, not duplicates check
    # of content): together they are exactly scikit-learn's 1,797 images.
    from sklearn.datasets import load_digits
    full = load_digits()
    all_x = np.concatenate([train_x, test_x]).reshape(1797, 64).astype(np.int64)
    ref = full.images.reshape(1797, 64).astype(np.int64)
    all_y = np.concatenate([train_y, test_y])
    def key(x, y):
        return sorted(map(tuple, np.column_stack([x, y]).tolist()))
    assert key(all_x, all_y) == key(ref, full.target)
