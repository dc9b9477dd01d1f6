"""The network noise of the Pi-model's and Mean Teacher's CNN-13 ("conv-large"): Gaussian
noise on the input and dropout after each max-pool, in train mode only.

Laine & Aila's network (2017, their appendix) and Mean Teacher's CIFAR-10 recipe
(its TensorFlow ``Model.DEFAULT_HYPERPARAMS``: ``input_noise`` 0.15,
``student_dropout_probability`` / ``teacher_dropout_probability`` 0.5) use these values.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_NOISE = 0.15
DROPOUT_RATE = 0.5
# The random streams a noisy network draws from in train mode (``model.apply(rngs=...)``).
RNG_STREAMS = ("noise", "dropout")


def add_input_noise(module: nn.Module, x: jnp.ndarray, std: float, train: bool) -> jnp.ndarray:
    """``x + std * N(0, 1)`` in train mode with ``std > 0`` (rng ``"noise"``), else ``x``."""
    if not train or std <= 0:
        return x
    return x + std * jax.random.normal(module.make_rng("noise"), x.shape, x.dtype)
