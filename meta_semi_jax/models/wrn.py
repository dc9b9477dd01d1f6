"""Wide ResNet of MixMatch (Berthelot et al., 2019): WRN-28-2 with LeakyReLU(0.1).

Follows MixMatch's TensorFlow ``ResNet.classifier`` (libml/models.py): pre-activation
units, convolutions initialised normal with std sqrt(2 / (k * k * out_channels)),
BatchNorm momentum 0.999 and epsilon 1e-3 (TensorFlow's default), and a Glorot-normal
dense classifier. Unlike MixMatch's ``tf.layers.conv2d`` (bias on by default), the
convolutions here have no bias, as in the usual PyTorch ports: every value those biases
could add is a per-channel constant on a path that reaches a BatchNorm, which removes it,
so the function class is the same with 2,032 fewer parameters for WRN-28-2.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

LEAKY_SLOPE = 0.1
STEM_CHANNELS = 16

# MixMatch's conv initialiser: normal with stddev sqrt(2 / (k * k * out_channels)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PreActUnit(nn.Module):
    """BN -> LReLU -> conv3x3(strides) -> BN -> LReLU -> conv3x3, plus a shortcut.

    The shortcut is a 1x1 convolution (with ``strides``) when the channels or the
    resolution change, else the identity. With ``activate_before_residual`` the shortcut
    takes the pre-activated input (MixMatch does this for the network's first unit only);
    otherwise it takes the raw input.
    """

    features: int
    strides: int = 1
    activate_before_residual: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.999,
                                 epsilon=1e-3, axis_name=self.axis_name, dtype=self.dtype)
        conv = functools.partial(nn.Conv, self.features, use_bias=False,
                                 kernel_init=conv_init, dtype=self.dtype)
        out = nn.leaky_relu(norm()(x), LEAKY_SLOPE)
        if self.activate_before_residual:
            x = out
        out = conv((3, 3), strides=self.strides)(out)
        out = nn.leaky_relu(norm()(out), LEAKY_SLOPE)
        out = conv((3, 3))(out)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv((1, 1), strides=self.strides, name="shortcut")(x)
        return x + out


class WideResNet(nn.Module):
    """MixMatch's WRN-depth-width on NHWC images; returns float32 logits.

    Stem conv3x3 (16), ``num_stages`` stages of ``(depth - 4) / 6`` pre-activation units
    with ``stage_channels`` channels (stride 2 at the first unit of every stage but the
    first), then BN -> LReLU -> global average pool -> dense. The default is WRN-28-2
    for 32x32 images; ``num_stages=4`` adds a 256-channel stage for STL-10's 96x96.

    Attributes:
      num_classes: number of logits.
      depth: 6 * units_per_stage + 4.
      width: channel multiplier of the stages (16 * width channels in the first).
      num_stages: number of stages; channels double from one stage to the next.
      axis_name: mapped axis over which every BatchNorm averages its batch statistics
        (synchronised BatchNorm); ``None`` for per-device statistics.
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int
    depth: int = 28
    width: int = 2
    num_stages: int = 3
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(STEM_CHANNELS * self.width * 2**i for i in range(self.num_stages))

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6 * n + 4 with n >= 1, got {self.depth}")
        units_per_stage = (self.depth - 4) // 6
        x = nn.Conv(STEM_CHANNELS, (3, 3), use_bias=False, kernel_init=conv_init,
                    dtype=self.dtype, name="stem")(x.astype(self.dtype))
        for stage, features in enumerate(self.stage_channels):
            for unit in range(units_per_stage):
                x = PreActUnit(features, strides=2 if stage > 0 and unit == 0 else 1,
                               activate_before_residual=stage == 0 and unit == 0,
                               axis_name=self.axis_name, dtype=self.dtype,
                               name=f"stage{stage + 1}_unit{unit + 1}")(x, train)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.999, epsilon=1e-3,
                         axis_name=self.axis_name, dtype=self.dtype, name="head_bn")(x)
        x = jnp.mean(nn.leaky_relu(x, LEAKY_SLOPE), axis=(1, 2))
        self.sow("intermediates", "features", x)  # read by feature-based losses (SNTG)
        x = nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_normal(),
                     dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)
