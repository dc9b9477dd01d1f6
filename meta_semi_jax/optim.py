"""Optimisers and learning-rate schedules of Appendix C, built from optax."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """``cosine``: from ``learning_rate`` to 0 over ``num_train_steps`` (CNN-13 runs);
    ``constant``: ``learning_rate`` throughout (MixMatch's WRN recipe)."""
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_train_steps)
    return optax.constant_schedule(config.learning_rate)


def _kernels_only(params: Any) -> Any:
    """True for convolution and dense kernels, False for biases, BatchNorm and WN scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``sgd``: Nesterov momentum with coupled L2 on every parameter, like PyTorch's
    ``weight_decay`` (CNN-13: momentum 0.9, L2 1e-4, lr 0.1, cosine).
    ``adam``: Adam with decoupled decay ``kernel *= 1 - weight_decay * lr`` on kernels
    only (MixMatch's WRN-28-2: lr 0.002, weight_decay 0.02)."""
    schedule = learning_rate_schedule(config)
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=_kernels_only)
