"""The model zoo: ICT's CNN-13 (and a CPU-sized one for 28x28 Fashion-MNIST), MixMatch's
WRN-28-2 (with four stages for STL-10) and a small CNN for 8x8 digits.

Every model is a flax module called as ``model.apply(variables, x, train=...)`` on NHWC
float images, with a ``batch_stats`` collection that ``train=True`` updates. Each sows
the features its classifier reads (after global average pooling) as
``intermediates/features``, returned when ``mutable`` includes ``"intermediates"``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meta_semi_jax.models.cnn13 import CNN13
from meta_semi_jax.models.cnn13_small import CNN13Small
from meta_semi_jax.models.noise import DROPOUT_RATE, INPUT_NOISE, RNG_STREAMS
from meta_semi_jax.models.small import SmallCNN
from meta_semi_jax.models.wrn import WideResNet

# name -> constructor taking (num_classes, *, axis_name, dtype)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn13": CNN13,
    "cnn13_small": CNN13Small,  # Fashion-MNIST on a CPU: CNN-13 at 1/16 of its widths
    "wrn28_2": functools.partial(WideResNet, depth=28, width=2),
    # MixMatch's STL-10 network (runs/table2.sh: --scales=4): a fourth, 256-channel stage.
    "wrn28_2_scales4": functools.partial(WideResNet, depth=28, width=2, num_stages=4),
    "small_cnn": SmallCNN,
}


# The fields of every model's constructor (``MODELS``), and so of a user's own model.
CONSTRUCTOR_FIELDS = ("num_classes", "axis_name", "dtype")


def import_model_class(path: str) -> type[nn.Module]:
    """The Flax module class that ``package.module:ClassName`` names, checked for the
    models' convention: fields ``CONSTRUCTOR_FIELDS`` and ``__call__(x, train)``.
    Raises ``ValueError`` with one line (completing "it is not allowed: ...")."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ValueError("name your own model as package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module may raise anything while it is imported
        raise ValueError(f"module {module_name!r} cannot be imported ({type(e).__name__}: "
                         f"{e})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"module {module_name!r} has no Flax module class {class_name!r}")
    fields = {field.name for field in dataclasses.fields(cls)}
    missing = [name for name in CONSTRUCTOR_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{path} has no field {', '.join(missing)}: a model takes "
                         f"{', '.join(CONSTRUCTOR_FIELDS)} (see meta_semi_jax.models)")
    if "train" not in inspect.signature(cls.__call__).parameters:
        raise ValueError(f"{path}.__call__ has no argument 'train': a model is called as "
                         f"__call__(x, train)")
    return cls


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """``MODELS[name]``, or the user's class for ``package.module:ClassName``; raises
    ``ValueError`` (one line) for anything else."""
    if ":" in name:
        return import_model_class(name)
    if name not in MODELS:
        raise ValueError(f"no model is named {name!r}; choose one of "
                         f"{', '.join(sorted(MODELS))}, or name your own model as "
                         f"package.module:ClassName")
    return MODELS[name]


# Models that take the Pi-model's and Mean Teacher's network noise (models/noise.py).
NOISY_MODELS: tuple[str, ...] = ("cnn13", "cnn13_small", "small_cnn")


def create_model(name: str, num_classes: int, *, axis_name: str | None = None,
                 dtype: Any = jnp.float32, noisy: bool = False) -> nn.Module:
    """The model registered as ``name``, or the user's Flax module that
    ``package.module:ClassName`` names (``model_constructor``); ``axis_name``
    synchronises BatchNorm statistics; ``noisy`` adds the input noise and dropout of the
    Pi-model's and Mean Teacher's CNN-13 (``NOISY_MODELS`` only)."""
    constructor = model_constructor(name)
    if noisy and name not in NOISY_MODELS:
        raise ValueError(f"model {name!r} has no network noise; noisy models: "
                         f"{', '.join(NOISY_MODELS)}")
    noise = {"input_noise": INPUT_NOISE, "dropout_rate": DROPOUT_RATE} if noisy else {}
    return constructor(num_classes=num_classes, axis_name=axis_name, dtype=dtype, **noise)


__all__ = ["CNN13", "CNN13Small", "CONSTRUCTOR_FIELDS", "MODELS", "NOISY_MODELS", "RNG_STREAMS",
           "SmallCNN", "WideResNet", "create_model", "import_model_class", "model_constructor"]
