"""Supervised + MixUp (Zhang et al., 2018): cross-entropy on ``MixUp(X, Shuffle(X), lam)``.

``lam ~ Beta(alpha, alpha)`` once per batch, used as drawn. ``alpha``: 1.0, the MixUp
paper's value for CIFAR (``config.supervised_mixup.alpha``). The unlabeled data is unused.
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    gradients_of,
    mix_global,
)
from meta_semi_jax.algorithms.supervised import labeled_objective
from meta_semi_jax.mixup import sample_mixup_lambda
from meta_semi_jax.state import TrainState


def make(num_classes: int, *, alpha: float) -> Algorithm:
    """Mean cross-entropy over the globally mixed labeled batch, ``lam ~ Beta(alpha, alpha)``."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        k_lam, k_perm = jax.random.split(key)
        mixed = mix_global(k_perm, batch.labeled_images,
                           jax.nn.one_hot(batch.labels, num_classes),
                           sample_mixup_lambda(k_lam, alpha), axis_name)
        return gradients_of(labeled_objective(state, mixed.inputs, mixed.targets, axis_name),
                            state, lambda _: {}, axis_name)
    return Algorithm(gradients)
