"""MixMatch (Berthelot et al., 2019), the paper's reference for WRN-28-2.

1. K augmentations of each unlabeled image; guessed label ``q = Sharpen(mean_k
   softmax f(u_k), T)`` with ``Sharpen(p)_c = p_c^(1/T) / sum_c' p_c'^(1/T)``, no gradient.
2. ``W = Shuffle(Concat(X, U_1..U_K))`` over the global batch; every example of
   ``Concat(X, U_1..U_K)`` draws its own ``lam ~ Beta(alpha, alpha)`` and is mixed with
   its partner in W with ``lam' = max(lam, 1 - lam)`` (so it stays closest to itself;
   MixMatch's ``augment_pair`` samples one lambda per example).
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

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    forward_train,
    labeled_and_consistency_gradients,
    ramped_weight,
)
from meta_semi_jax.mixup import Mixed, mixup_with_shuffle
from meta_semi_jax.parallel import gather_global, local_shard
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


def mixed_batch(key: jax.Array, labeled_images: jax.Array, one_hot_labels: jax.Array,
                views: jax.Array, guesses: jax.Array, alpha: float,
                axis_name: str | None) -> tuple[Mixed, Mixed]:
    """This device's mixed labeled and unlabeled parts (MixMatch steps 2-3).

    Partners are drawn over the global ``Concat(X, U_1..U_K)`` (unlabeled examples in
    example-major order), so the result does not depend on the device count. Returns
    the mixed labeled part ``[B_l]`` and the mixed unlabeled part ``[B_u * K]``.
    """
    num_views, num_unlabeled = views.shape[:2]
    by_example = jnp.swapaxes(views, 0, 1)  # [B_u, K, ...]
    guess_targets = jnp.broadcast_to(guesses[:, None], (num_unlabeled, num_views)
                                     + guesses.shape[1:])
    g_x, g_y, g_u, g_t = gather_global(
        (labeled_images, one_hot_labels, by_example, guess_targets), axis_name)
    def flat(a: jax.Array) -> jax.Array:
        return a.reshape((-1,) + a.shape[2:])

    inputs = jnp.concatenate([g_x, flat(g_u)])
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha, (inputs.shape[0],))
    mixed = mixup_with_shuffle(k_perm, inputs, jnp.concatenate([g_y, flat(g_t)]),
                               jnp.maximum(lam, 1.0 - lam))
    n_x = g_x.shape[0]
    mixed_x = Mixed(mixed.inputs[:n_x], mixed.targets[:n_x])
    mixed_u = Mixed(*(a[n_x:].reshape(g_u.shape[:2] + a.shape[1:]) for a in mixed))
    mixed_x, mixed_u = local_shard((mixed_x, mixed_u), axis_name)
    return mixed_x, Mixed(*(flat(a) for a in mixed_u))


def make(num_classes: int, *, alpha: float, weight: float, rampup_steps: int,
         temperature: float, augmentations: int) -> Algorithm:
    """MixMatch with Beta(alpha, alpha), ``lambda_u = weight`` ramped up linearly over
    ``rampup_steps``, sharpening temperature T and K = ``augmentations`` unlabeled views."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        views = batch.unlabeled_views()
        mixed_x, mixed_u = mixed_batch(
            key, batch.labeled_images, jax.nn.one_hot(batch.labels, num_classes), views,
            guessed_labels(state, views, temperature), alpha, axis_name)
        return labeled_and_consistency_gradients(
            state, mixed_x.inputs, mixed_x.targets, mixed_u.inputs,
            lambda params, batch_stats: (mixed_u.targets, batch_stats),
            ramped_weight(state, weight, rampup_steps, "linear"), axis_name)
    return Algorithm(gradients, unlabeled_views=augmentations)
