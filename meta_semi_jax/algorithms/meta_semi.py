"""Meta-Semi (Algorithm 1): pseudo-label, MixUp, meta-reweight, update.

1. Soft pseudo labels of U from the EMA model (Sec. 3.3).
2. ``X~ = MixUp(X, Shuffle(X))``, ``U~ = MixUp(Concat(X, U), Shuffle(...))`` (Eqs. 12-13).
3. Meta scores ``s_j`` of every example of U~ against the labeled gradient (Eq. 10).
4. 0-1 weights ``w_j = [s_j >= 0]`` (Eq. 9).
5. Gradient of ``L_meta = sum_j w_j L_j / sum_j w_j`` (Eq. 1) with the weights held fixed.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from meta_semi_jax.algorithms.common import (Gradients, HParams, SSLBatch, forward_train,
                                             per_example_loss_fn, pmean_if, psum_if,
                                             pseudo_label_diagnostics, pseudo_labels)
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import labeled_gradient, meta_scores, meta_weights, weighted_loss
from meta_semi_jax.mixup import Mixed, mixup_labeled_and_unlabeled
from meta_semi_jax.parallel import gather_global, local_shard
from meta_semi_jax.state import TrainState


def mixed_batches(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
                  axis_name: str | None = None) -> tuple[Mixed, Mixed, jax.Array]:
    """This device's X~ and U~ (Eqs. 12-13) and the pseudo labels of its U (Sec. 3.3).

    MixUp partners are drawn from the global batch, so the step does not depend on how
    many devices share it; each device then keeps its slice of X~ and U~.
    """
    one_hot = jax.nn.one_hot(batch.labels, hparams.num_classes)
    targets_u = pseudo_labels(state, batch.unlabeled_images, hparams.teacher_bn_mode)
    global_inputs = gather_global(
        (batch.labeled_images, one_hot, batch.unlabeled_images, targets_u), axis_name)
    mixed_x, mixed_u = local_shard(
        mixup_labeled_and_unlabeled(key, *global_inputs, hparams.beta), axis_name)
    return mixed_x, mixed_u, targets_u


def assumption_terms(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
                     axis_name: str | None = None) -> tuple[jax.Array, Any]:
    """For one sample of (X~, U~): ``||grad L_meta||^2`` and ``grad G(X~)`` with
    ``G = sum_i L(y~_i, p(x~_i))`` (Eq. 15), the two sides of Assumption 1."""
    meta_grads = gradients(state, batch, key, hparams, axis_name).grads
    mixed_x, _, _ = mixed_batches(state, batch, key, hparams, axis_name)
    g_labeled = labeled_gradient(per_example_loss_fn(state), state.params, tuple(mixed_x),
                                 axis_name)
    return optax.tree.norm(meta_grads, squared=True), g_labeled


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradient of Eq. (1) for one Meta-Semi step, and its diagnostics.

    ``key`` must be the same on every device of ``axis_name``.

    Metrics: ``loss`` (Eq. 1 on the global batch), ``selected`` (mean of w, the share
    of U~ used), ``labeled_loss`` (mean loss on X~), ``mean_score``, and with
    ``batch.hidden_labels`` the pseudo-label accuracies of ``pseudo_label_diagnostics``.
    """
    mixed_x, mixed_u, targets_u = mixed_batches(state, batch, key, hparams, axis_name)
    loss_fn = per_example_loss_fn(state)
    scores = meta_scores(loss_fn, state.params, tuple(mixed_x), tuple(mixed_u),
                         hparams.meta_grad, axis_name=axis_name)
    weights = meta_weights(scores)

    def objective(params):
        logits, batch_stats = forward_train(state, params, mixed_u.inputs)
        return weighted_loss(soft_cross_entropy(logits, mixed_u.targets), weights,
                             axis_name), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    labeled_loss = jnp.mean(loss_fn(state.params, tuple(mixed_x)))
    metrics = {"loss": psum_if(loss, axis_name),
               "selected": pmean_if(jnp.mean(weights), axis_name),
               "labeled_loss": pmean_if(labeled_loss, axis_name),
               "mean_score": pmean_if(jnp.mean(scores), axis_name)}
    if batch.hidden_labels is not None:
        metrics.update(pseudo_label_diagnostics(targets_u, batch.hidden_labels,
                                                batch.labels.shape[0], weights, axis_name))
    return Gradients(psum_if(grads, axis_name), pmean_if(batch_stats, axis_name), metrics)
