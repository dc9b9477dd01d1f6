"""The semi-supervised split: validation, labeled and unlabeled indices of a training pool.

A pure function of (labels, num_labels, num_validation, seed, unlabeled_includes_labeled),
or for STL-10 of its predefined fold instead of num_labels: the same arguments give the
same split on every machine (Appendix C: labels kept evenly per class, validation
held out from the training set, all other samples unlabeled).
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np


class SplitIndices(NamedTuple):
    """Indices into the training pool."""
    labeled: np.ndarray
    unlabeled: np.ndarray
    validation: np.ndarray

    def record(self) -> dict[str, object]:
        """The split as JSON-ready lists, with its digest (written to ``split.json``)."""
        return {"hash": self.digest(), **{name: getattr(self, name).tolist()
                                          for name in self._fields}}

    def digest(self) -> str:
        """A short hash of the three index arrays, to pin a split in logs and results."""
        h = hashlib.sha256()
        for part in self:
            h.update(np.ascontiguousarray(part, np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def max_labels_per_class(labels: np.ndarray, num_classes: int, num_validation: int) -> int:
    """The most labels per class a split can keep after holding out the validation set."""
    counts = np.bincount(labels, minlength=num_classes)
    return int(counts.min()) - num_validation // num_classes


def ssl_split(labels: np.ndarray, num_classes: int, num_labels: int, num_validation: int,
              seed: int, unlabeled_includes_labeled: bool = False) -> SplitIndices:
    """Holds out ``num_validation`` examples, then keeps ``num_labels`` labels, both spread
    evenly over the classes; every remaining example is unlabeled.

    With ``unlabeled_includes_labeled`` the labeled examples are also put into the
    unlabeled set: the paper's "all other samples are unlabeled" as ICT's code reads it
    for CIFAR and SVHN; MixMatch's code keeps the two sets disjoint.
    """
    if num_labels % num_classes or num_validation % num_classes:
        raise ValueError("num_labels and num_validation must be multiples of the class count")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    per_class_val = num_validation // num_classes
    per_class_lab = num_labels // num_classes
    validation = _per_class_prefix(order, labels, num_classes, per_class_val)
    rest = order[~np.isin(order, validation)]
    labeled = _per_class_prefix(rest, labels, num_classes, per_class_lab)
    excluded = validation if unlabeled_includes_labeled else np.concatenate([validation, labeled])
    unlabeled = np.setdiff1d(np.arange(len(labels)), excluded)
    return SplitIndices(labeled, unlabeled, validation)


def _per_class_prefix(order: np.ndarray, labels: np.ndarray, num_classes: int,
                      per_class: int) -> np.ndarray:
    """The first ``per_class`` indices of each class, in the order given."""
    return np.sort(np.concatenate(
        [order[labels[order] == c][:per_class] for c in range(num_classes)]))


def fold_split(labels: np.ndarray, labeled: np.ndarray, num_classes: int,
               num_validation: int, seed: int) -> SplitIndices:
    """A split whose labeled set is given (STL-10's predefined folds): validation is drawn
    evenly per class from the other examples, and the rest is unlabeled."""
    rest = np.setdiff1d(np.arange(len(labels)), labeled)
    order = rest[np.random.default_rng(seed).permutation(len(rest))]
    validation = _per_class_prefix(order, labels, num_classes, num_validation // num_classes)
    unlabeled = np.setdiff1d(rest, validation)
    return SplitIndices(np.sort(labeled), unlabeled, validation)
