"""A small CNN for scikit-learn's 8x8 greyscale digits, fast enough for a 2-core CPU.

Not from a paper: a compact stand-in with CNN-13's building blocks (conv -> BatchNorm
-> LeakyReLU(0.1), max-pool, global average pool), used by the embedded digits config.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meta_semi_jax.models.noise import add_input_noise

LEAKY_SLOPE = 0.1


class SmallCNN(nn.Module):
    """conv3x3 (width) -> conv3x3 (width) -> max-pool 2 (8x8 -> 4x4) -> conv3x3 (2 width)
    -> global average pool -> dense; every conv is bias-free and followed by BatchNorm
    (momentum 0.9, epsilon 1e-5) and LeakyReLU(0.1). Returns float32 logits.

    Attributes:
      num_classes: number of logits.
      axis_name: mapped axis over which every BatchNorm averages its batch statistics
        (synchronised BatchNorm); ``None`` for per-device statistics.
      dtype: computation dtype; parameters stay float32.
      width: channels of the first two convolutions.
      input_noise, dropout_rate: as CNN-13's (Gaussian input noise, dropout after the
        max-pool, both in train mode only; 0 turns them off).
    """

    num_classes: int
    axis_name: str | None = None
    dtype: Any = jnp.float32
    width: int = 32
    input_noise: float = 0.0
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype)

        def conv_bn_act(x: jnp.ndarray, features: int) -> jnp.ndarray:
            x = nn.Conv(features, (3, 3), use_bias=False, dtype=self.dtype)(x)
            return nn.leaky_relu(norm()(x), LEAKY_SLOPE)

        x = conv_bn_act(add_input_noise(self, x, self.input_noise, train).astype(self.dtype),
                        self.width)
        x = conv_bn_act(x, self.width)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = conv_bn_act(x, 2 * self.width)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)  # read by feature-based losses (SNTG)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
