"""The tests' tiny Flax model with BatchNorm, in the models' calling convention
(``__call__(x, train)``), for tests that need examples to interact through batch
statistics at the smallest cost."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvBatchNormNet(nn.Module):
    """Conv 3x3 -> BatchNorm (batch statistics in train mode, synchronised over
    ``axis_name``) -> ``activation`` -> global mean pool (sown as the features) -> Dense,
    all in ``dtype``."""
    num_classes: int
    features: int = 4
    dtype: Any = jnp.float32
    axis_name: str | None = None
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, (3, 3), param_dtype=self.dtype, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                         param_dtype=self.dtype, dtype=self.dtype)(x)
        x = jnp.mean(self.activation(x), axis=(1, 2))
        self.sow("intermediates", "features", x)  # as the real models (SNTG reads it)
        return nn.Dense(self.num_classes, param_dtype=self.dtype, dtype=self.dtype)(x)
