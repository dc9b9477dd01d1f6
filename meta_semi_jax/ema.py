"""Exponential moving average of parameters (the EMA teacher of Sec. 3.3)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def ema_decay_at(step: int | jax.Array, max_decay: float) -> jax.Array:
    """ICT's ramped decay ``min(1 - 1/(step + 1), max_decay)``: early EMA follows the model."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), max_decay)


def ema_update(ema: Any, new: Any, decay: jax.Array) -> Any:
    """``ema <- decay * ema + (1 - decay) * new`` for every leaf (decay 0.999 in the paper)."""
    return optax.incremental_update(new, ema, 1.0 - decay)
