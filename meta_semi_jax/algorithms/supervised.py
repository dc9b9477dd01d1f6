"""The supervised baseline: cross-entropy on the (augmented) labeled batch only."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import (Gradients, HParams, SSLBatch, forward_train,
                                             pmean_if, psum_if)
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import weighted_loss
from meta_semi_jax.state import TrainState


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Mean cross-entropy over the global labeled batch; the unlabeled data is unused."""
    del key
    targets = jax.nn.one_hot(batch.labels, hparams.num_classes)
    weights = jnp.ones(batch.labels.shape, jnp.float32)

    def objective(params):
        logits, batch_stats = forward_train(state, params, batch.labeled_images)
        return weighted_loss(soft_cross_entropy(logits, targets), weights, axis_name), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    metrics = {"loss": psum_if(loss, axis_name),
               "labeled_loss": psum_if(loss, axis_name)}
    return Gradients(psum_if(grads, axis_name), pmean_if(batch_stats, axis_name), metrics)
