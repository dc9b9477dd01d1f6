"""fast-SWA's weight average (Athiwaratkun, Finzi, Izmailov & Wilson, ICLR 2019): a
running average of the student's weights at points within the learning-rate cycles,
evaluated with BatchNorm statistics recomputed for the averaged weights
(``bn_recompute.py``).

As their code (github.com/benathi/fastswa-semi-sup, ``main.py`` and
``mean_teacher/optim_weight_swa.py``): the average holds the student's parameters
after every ``every_steps``-th step from ``start_steps`` on (their "fast-SWA
frequency" from epoch ``l0 - c``), as a running mean ``mean <- mean + (params - mean)
/ n``; its BatchNorm statistics are not averaged but recomputed by train-mode passes
of the averaged weights over training batches (their ``update_batchnorm``). Here the
recomputed statistics are the cumulative average of the batches' statistics (SWA's
``bn_update``, PyTorch's ``swa_utils.update_bn``), whatever the model's BatchNorm
momentum; fast-SWA's code instead runs PyTorch's momentum-0.1 update over 101 batches
(README, "Where this differs").
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_semi_jax.ema import ema_update


class FastSWA(NamedTuple):
    """When the student's weights are averaged: after every ``every_steps``-th step from
    ``start_steps`` on; and over how many training batches the averaged model's
    BatchNorm statistics are recomputed (``bn_recompute.py``)."""
    start_steps: int
    every_steps: int
    bn_batches: int


class WeightAverage(NamedTuple):
    """The running mean of the student's parameters and how many points it holds; kept
    in ``TrainState.algorithm_state`` (replicated, and in every checkpoint)."""
    params: Any
    num_points: jax.Array  # int32 scalar


def initial_average(params: Any) -> WeightAverage:
    """No point yet: zeros in ``params``' shapes and types."""
    return WeightAverage(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))


def is_averaging_step(step: int | jax.Array, spec: FastSWA) -> jax.Array:
    """Whether the parameters after ``step`` steps are a point of the average."""
    step = jnp.asarray(step)
    return (step >= spec.start_steps) & ((step - spec.start_steps) % spec.every_steps == 0)


def averaged(average: WeightAverage, params: Any, step: int | jax.Array,
             spec: FastSWA) -> WeightAverage:
    """``average`` with ``params`` (the student's after ``step`` steps) added when
    ``step`` is an averaging step: the running mean is the EMA with decay ``n / (n + 1)``
    (``ema.ema_update``), decay 1 (unchanged) at the other steps."""
    due = is_averaging_step(step, spec)
    count = average.num_points.astype(jnp.float32)
    decay = jnp.where(due, count / (count + 1.0), 1.0)
    return WeightAverage(ema_update(average.params, params, decay),
                         average.num_points + due.astype(jnp.int32))


