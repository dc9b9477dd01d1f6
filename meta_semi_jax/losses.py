"""Per-example losses used by Meta-Semi and the baselines."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``L(y, p) = -sum_k y_k log softmax(logits)_k`` per example, for soft targets.

    The loss ``L`` of Eqs. (1)-(3): mixed one-hot labels (Eq. 11) and soft EMA
    pseudo labels (Sec. 3.3) are both probability vectors. Returns ``[B]``.
    """
    return optax.softmax_cross_entropy(logits, targets)


def softmax_mse(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``mean_k (softmax(logits)_k - targets_k)^2`` per example: the consistency loss of
    the Pi-model, Mean Teacher, ICT and MixMatch (their codes average it over the batch
    and the classes). Gradients flow into ``targets`` too unless the caller stops them.
    Returns ``[B]``."""
    return jnp.mean(jnp.square(jax.nn.softmax(logits) - targets), axis=-1)
