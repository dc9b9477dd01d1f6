"""Optimisers and learning-rate schedules of Appendix C, built from optax."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import optax

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


class LRCycles(NamedTuple):
    """fast-SWA's learning-rate cycles (Athiwaratkun et al. 2019, ``adjust_learning_rate``
    of github.com/benathi/fastswa-semi-sup): a cosine from the peak to 0 over
    ``decay_steps``, followed for the first ``start_steps`` (their ``epochs``, l0); from
    then on cycles of ``cycle_steps`` (c) that each repeat the cosine's stretch
    ``[start_steps - cycle_steps, start_steps)``."""
    decay_steps: int
    start_steps: int
    cycle_steps: int


def cyclic_cosine_schedule(peak: float, cycles: LRCycles) -> optax.Schedule:
    """``lr(t) = peak * (1 + cos(pi * min(t, D) / D)) / 2`` for ``t < l0`` (``D`` =
    ``cycles.decay_steps``), and ``lr(l0 - c + (t - l0) mod c)`` from ``l0`` on."""
    cosine = optax.cosine_decay_schedule(peak, cycles.decay_steps)
    restart = cycles.start_steps - cycles.cycle_steps

    def cycle(count: jax.Array) -> jax.Array:
        return cosine(restart + count % cycles.cycle_steps)
    return optax.join_schedules([cosine, cycle], [cycles.start_steps])


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           cycles: LRCycles | None = None) -> optax.Schedule:
    """``cosine``: from ``learning_rate`` to 0 over ``num_train_steps`` (CNN-13 runs);
    ``constant``: ``learning_rate`` throughout (MixMatch's WRN recipe). An algorithm
    with learning-rate ``cycles`` (``Algorithm.lr_cycles``: Mean Teacher + fast-SWA,
    whose recipe in ``config.<algorithm>`` gives them) trains with
    ``cyclic_cosine_schedule`` instead of ``cosine`` (``config_check`` refuses it with
    ``constant``)."""
    if cycles is not None:
        return cyclic_cosine_schedule(config.learning_rate, cycles)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_train_steps)
    return optax.constant_schedule(config.learning_rate)


def _kernels_only(params: Any) -> Any:
    """True for convolution and dense kernels, False for biases, BatchNorm and WN scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: ml_collections.ConfigDict,
                   cycles: LRCycles | None = None) -> optax.GradientTransformation:
    """``sgd``: Nesterov momentum with coupled L2 on every parameter, like PyTorch's
    ``weight_decay`` (CNN-13: momentum 0.9, L2 1e-4, lr 0.1, cosine).
    ``adam``: Adam with decoupled decay ``kernel *= 1 - weight_decay * lr`` on kernels
    only (MixMatch's WRN-28-2: lr 0.002, weight_decay 0.02). ``cycles`` as
    ``learning_rate_schedule``'s."""
    schedule = learning_rate_schedule(config, cycles)
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=_kernels_only)
