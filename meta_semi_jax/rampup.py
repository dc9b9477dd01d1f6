"""Ramp-ups of an unlabeled loss's weight over the first steps of training.

The sigmoid shape ``exp(-5 (1 - t/T)^2)`` is the one of the Pi-model (Laine & Aila),
Mean Teacher and ICT; MixMatch ramps linearly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid_rampup(step: int | jax.Array, rampup_steps: int) -> jax.Array:
    """``exp(-5 (1 - t/T)^2)`` for ``t < T``, then 1 (1 throughout when ``T = 0``)."""
    if rampup_steps <= 0:
        return jnp.float32(1.0)
    phase = 1.0 - jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * phase * phase)


def linear_rampup(step: int | jax.Array, rampup_steps: int) -> jax.Array:
    """``min(t / T, 1)`` (1 throughout when ``T = 0``)."""
    if rampup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
