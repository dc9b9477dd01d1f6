"""MixMatch (Berthelot et al., 2019), the paper's reference for WRN-28-2.

1. K augmentations of each unlabeled image; guessed label ``q = Sharpen(mean_k
   softmax f(u_k), T)`` with ``Sharpen(p)_c = p_c^(1/T) / sum_c' p_c'^(1/T)``, no gradient.
2. ``W = Shuffle(Concat(X, U_1..U_K))``; ``lam ~ Beta(alpha, alpha)``,
   ``lam' = max(lam, 1 - lam)``; every example of ``Concat(X, U_1..U_K)`` is mixed with
   its partner in W with ``lam'`` (so it stays closest to itself).
3. Loss: ``mean CE`` on the mixed labeled part ``+ lambda_u(t) * mean softmax_mse`` on
   the mixed unlabeled part, ``lambda_u`` ramped up linearly.
Recipe (MixMatch paper; the Meta-Semi paper fixes T and K and tunes alpha, lambda_u on
CIFAR-100's validation set): T = 0.5, K = 2, alpha = 0.75, lambda_u = 75 on CIFAR-10,
150 on CIFAR-100, 250 on SVHN, 50 on STL-10, ramped over 16,384 steps (1,024 kimg at
batch 64): ``config.mixmatch.*``. The guesses use the model in train mode with its
BatchNorm updates discarded; one forward pass over the whole mixed batch stands for
MixMatch's interleaving (both make BatchNorm see a representative batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import (Gradients, HParams, SSLBatch, forward_train,
                                             labeled_and_consistency_gradients, mix_global,
                                             unlabeled_loss_weight)
from meta_semi_jax.mixup import sample_mixup_lambda
from meta_semi_jax.state import TrainState


def sharpen(probs: jax.Array, temperature: float) -> jax.Array:
    """``p_c^(1/T) / sum_c' p_c'^(1/T)`` along the last axis (MixMatch Eq. 7)."""
    powered = jnp.power(probs, 1.0 / temperature)
    return powered / jnp.sum(powered, axis=-1, keepdims=True)


def guessed_labels(state: TrainState, views: jax.Array, temperature: float) -> jax.Array:
    """Sharpened mean prediction of the current model over the K views ``[K, B, ...]``."""
    flat = views.reshape((-1,) + views.shape[2:])
    logits, _ = forward_train(state, state.params, flat)
    probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(views.shape[:2] + (-1,))
    return jax.lax.stop_gradient(sharpen(jnp.mean(probs, axis=0), temperature))


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradients of MixMatch's loss for one batch (``key`` equal on every device)."""
    k_lam, k_perm = jax.random.split(key)
    views = batch.unlabeled_views()
    guesses = guessed_labels(state, views, hparams.temperature)
    num_labeled = batch.labeled_images.shape[0]
    inputs = jnp.concatenate([batch.labeled_images, views.reshape((-1,) + views.shape[2:])])
    targets = jnp.concatenate([jax.nn.one_hot(batch.labels, hparams.num_classes),
                               jnp.tile(guesses, (views.shape[0], 1))])
    lam = sample_mixup_lambda(k_lam, hparams.alpha)
    mixed = mix_global(k_perm, inputs, targets, jnp.maximum(lam, 1.0 - lam), axis_name)
    return labeled_and_consistency_gradients(
        state, mixed.inputs[:num_labeled], mixed.targets[:num_labeled],
        mixed.inputs[num_labeled:], lambda params, batch_stats: (mixed.targets[num_labeled:],
                                                                 batch_stats),
        unlabeled_loss_weight(state, hparams, "linear"), axis_name)
