"""The supervised baseline: cross-entropy on the (augmented) labeled batch only."""
from __future__ import annotations

from typing import Any

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    forward_train,
    global_mean,
    gradients_of,
)
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.state import TrainState


def labeled_objective(state: TrainState, images: jax.Array, targets: jax.Array,
                      axis_name: str | None):
    """``params -> (share of the mean cross-entropy over the global batch, (stats, None))``."""
    def objective(params: Any):
        logits, batch_stats = forward_train(state, params, images)
        return global_mean(soft_cross_entropy(logits, targets), axis_name), (batch_stats, None)
    return objective


def make(num_classes: int) -> Algorithm:
    """Mean cross-entropy over the global labeled batch; the unlabeled data is unused."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        del key
        targets = jax.nn.one_hot(batch.labels, num_classes)
        return gradients_of(labeled_objective(state, batch.labeled_images, targets, axis_name),
                            state, lambda _: {}, axis_name)
    return Algorithm(gradients)
