"""CNN-13 of ICT (Verma et al., 2019), the network of Meta-Semi's CIFAR experiments.

Meta-Semi (Appendix C) uses ICT's CNN-13, which is the "conv-large" network of fast-SWA
(Athiwaratkun et al., 2019) without its input Gaussian noise and dropout; the baselines
whose CNN-13 results used them (Pi-model, Mean Teacher) get them back with
``input_noise`` and ``dropout_rate`` (``models.create_model(..., noisy=True)``). Every
convolution and the classifier are weight-normalised (one learnable scale per output
feature, like PyTorch's ``weight_norm(dim=0)``); BatchNorm follows PyTorch's defaults
(momentum 0.1, i.e. flax momentum 0.9, and epsilon 1e-5).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meta_semi_jax.models.noise import add_input_noise

LEAKY_SLOPE = 0.1


class WNConvBNAct(nn.Module):
    """Weight-normalised convolution (with bias) -> BatchNorm -> LeakyReLU(0.1).

    ``nn.WeightNorm`` normalises the kernel over its (H, W, in) axes and multiplies it
    by a scale per output channel; the bias is not normalised. The initial scale is 1,
    where PyTorch initialises ``g`` to the norm of the initial kernel; BatchNorm makes
    the forward pass independent of that scale.
    """

    features: int
    kernel_size: int
    padding: str
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                       padding=self.padding, dtype=self.dtype)
        x = nn.WeightNorm(conv)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype)(x)
        return nn.leaky_relu(x, LEAKY_SLOPE)


class CNN13(nn.Module):
    """ICT's CNN-13 on NHWC images (32x32 for CIFAR); returns float32 logits.

    block 1: 3 x conv3x3 (128, same), max-pool 2x2;
    block 2: 3 x conv3x3 (256, same), max-pool 2x2;
    block 3: conv3x3 (512, valid: 8x8 -> 6x6), conv1x1 (256), conv1x1 (128),
    global average pool; weight-normalised dense classifier.

    Attributes:
      num_classes: number of logits.
      axis_name: mapped axis over which every BatchNorm averages its batch statistics
        (synchronised BatchNorm); ``None`` for per-device statistics.
      dtype: computation dtype; parameters stay float32.
      width: channels of block 1; block 2 has twice as many, block 3's convolutions
        4, 2 and 1 times as many (128: ICT's network).
      input_noise: std of the Gaussian noise added to the input in train mode (rng
        ``"noise"``); dropout_rate: dropout after each max-pool in train mode (rng
        ``"dropout"``). Both 0 (off) for Meta-Semi.
    """

    num_classes: int
    axis_name: str | None = None
    dtype: Any = jnp.float32
    width: int = 128
    input_noise: float = 0.0
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        w = self.width

        def conv(features: int, kernel_size: int, padding: str, name: str) -> WNConvBNAct:
            return WNConvBNAct(features, kernel_size, padding, axis_name=self.axis_name,
                               dtype=self.dtype, name=name)

        x = add_input_noise(self, x, self.input_noise, train).astype(self.dtype)
        for name in ("conv1a", "conv1b", "conv1c"):
            x = conv(w, 3, "SAME", name)(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for name in ("conv2a", "conv2b", "conv2c"):
            x = conv(2 * w, 3, "SAME", name)(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = conv(4 * w, 3, "VALID", "conv3a")(x, train)
        x = conv(2 * w, 1, "VALID", "conv3b")(x, train)
        x = conv(w, 1, "VALID", "conv3c")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)  # read by feature-based losses (SNTG)
        x = nn.WeightNorm(nn.Dense(self.num_classes, dtype=self.dtype, name="fc"),
                          name="fc_weight_norm")(x)
        return x.astype(jnp.float32)
