"""The model zoo: ICT's CNN-13, MixMatch's WRN-28-2 (with four stages for STL-10) and a
small CNN for 8x8 digits.

Every model is a flax module called as ``model.apply(variables, x, train=...)`` on NHWC
float images, with a ``batch_stats`` collection that ``train=True`` updates.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meta_semi_jax.models.cnn13 import CNN13
from meta_semi_jax.models.small import SmallCNN
from meta_semi_jax.models.wrn import WideResNet

# name -> constructor taking (num_classes, *, axis_name, dtype)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn13": CNN13,
    "wrn28_2": functools.partial(WideResNet, depth=28, width=2),
    # MixMatch's STL-10 network (runs/table2.sh: --scales=4): a fourth, 256-channel stage.
    "wrn28_2_scales4": functools.partial(WideResNet, depth=28, width=2, num_stages=4),
    "small_cnn": SmallCNN,
}


def create_model(name: str, num_classes: int, *, axis_name: str | None = None,
                 dtype: Any = jnp.float32) -> nn.Module:
    """The model registered as ``name``; ``axis_name`` synchronises BatchNorm statistics."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, axis_name=axis_name, dtype=dtype)


__all__ = ["CNN13", "MODELS", "SmallCNN", "WideResNet", "create_model"]
