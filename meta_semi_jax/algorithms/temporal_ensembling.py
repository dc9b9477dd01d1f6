"""Temporal Ensembling (Laine & Aila, 2017): the predictions on each unlabeled image
should agree with an ensemble of the network's earlier predictions on it.

Each unlabeled training example ``i`` keeps ``Z_i``, the momentum average of the
network's predictions on it, ``Z_i <- a Z_i + (1 - a) z_i`` after each visit, and the
target of a visit is the bias-corrected ``z~_i = Z_i / (1 - a^n_i)`` of the ``n_i``
earlier visits (0 before the first). The sampler reads every image once per epoch, so
this is Laine & Aila's per-epoch update with the targets of the previous epochs.
Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(u) - z~_u||^2 / C``.

Recipe (Laine & Aila): ensemble momentum ``a = 0.6``; ``w(t)`` ramps up with
``exp(-5 (1 - t/T)^2)`` over the first 80 epochs to ``w_max = 30 * num_labels /
num_train_images``; their network's Gaussian input noise 0.15 and dropout 0.5
(``config.temporal_ensembling.*``). ``Z`` and ``n`` live in
``TrainState.algorithm_state`` on every device (a float per class and an int per pool
image) and in every checkpoint, so a resumed run continues exactly. An image drawn
twice within one step (a batch that straddles two epochs) gets both updates added.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    device_key,
    labeled_and_consistency_gradients,
    ramped_weight,
)
from meta_semi_jax.parallel import gather_global
from meta_semi_jax.state import TrainState


class Ensemble(NamedTuple):
    """Per pool image: the momentum average of the predictions, and how many it holds."""
    predictions: jax.Array  # Z, [N, C] float32
    counts: jax.Array       # n, [N] int32


def initial_ensemble(pool_size: int, num_classes: int) -> Ensemble:
    return Ensemble(jnp.zeros((pool_size, num_classes), jnp.float32),
                    jnp.zeros((pool_size,), jnp.int32))


def ensemble_targets(ensemble: Ensemble, ids: jax.Array, momentum: float) -> jax.Array:
    """``z~ = Z / (1 - a^n)`` of the images ``ids``, 0 where ``n = 0``."""
    seen = ensemble.counts[ids][:, None]
    correction = 1.0 - jnp.power(momentum, seen.astype(jnp.float32))
    return jnp.where(seen > 0, ensemble.predictions[ids] / jnp.where(seen > 0, correction, 1.0),
                     0.0)


def updated_ensemble(ensemble: Ensemble, ids: jax.Array, probs: jax.Array, momentum: float,
                     axis_name: str | None) -> Ensemble:
    """``Z_i <- a Z_i + (1 - a) z_i`` and ``n_i <- n_i + 1`` for every image of the global
    batch (each device applies the same update to its copy)."""
    ids, probs = gather_global((ids, probs.astype(ensemble.predictions.dtype)), axis_name)
    step = (1.0 - momentum) * (probs - ensemble.predictions[ids])
    return Ensemble(ensemble.predictions.at[ids].add(step), ensemble.counts.at[ids].add(1))


def make(num_classes: int, *, weight: float, rampup_steps: int, momentum: float,
         noisy_network: bool) -> Algorithm:
    """Temporal Ensembling with ensemble momentum ``momentum`` and maximum consistency
    weight ``weight`` ramped up over ``rampup_steps``; ``noisy_network`` as the
    Pi-model's."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        if batch.unlabeled_ids is None:
            raise ValueError("temporal_ensembling needs the pool indices of the unlabeled "
                             "batch (SSLBatch.unlabeled_ids)")
        ids = batch.unlabeled_ids
        ensemble = Ensemble(*(jnp.asarray(x) for x in state.algorithm_state))
        targets = ensemble_targets(ensemble, ids, momentum)
        return labeled_and_consistency_gradients(
            state, batch.labeled_images, jax.nn.one_hot(batch.labels, num_classes),
            batch.unlabeled_images, lambda params, batch_stats: (targets, batch_stats),
            ramped_weight(state, weight, rampup_steps, "sigmoid"), axis_name,
            rng=device_key(key, axis_name),
            algorithm_state=lambda probs: updated_ensemble(ensemble, ids, probs, momentum,
                                                           axis_name))
    return Algorithm(gradients, noisy_network=noisy_network,
                     init_state=lambda pool_size, params: initial_ensemble(pool_size, num_classes))
