"""The pure training step (one algorithm's gradients, the optimiser update, the EMA) and
the per-device program step that draws its batch on the device first."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import Algorithm
from meta_semi_jax.batches import DeviceData, SSLBatch
from meta_semi_jax.data.sampler import SamplerSpec, sample_batch
from meta_semi_jax.ema import ema_decay_at, ema_update
from meta_semi_jax.parallel import AXIS
from meta_semi_jax.state import TrainState
from meta_semi_jax.weight_average import WeightAverage, averaged


def apply_update(state: TrainState, grads: Any, batch_stats: Any, max_ema_decay: float,
                 ema_warmup: bool = True, teacher_batch_stats: Any = None) -> TrainState:
    """Optimiser step on ``grads`` (Algorithm 1, line 13), new BatchNorm statistics,
    then the EMA of the parameters with ICT's ramped decay (or, without ``ema_warmup``,
    ``max_ema_decay`` from the first step). The EMA model's BatchNorm statistics are
    ``teacher_batch_stats`` (its own, from clean images: ``common.Teacher``) where the
    algorithm has them, else the EMA of the student's; with ``max_ema_decay=0`` (no
    EMA, Table 5) the EMA model is the model, statistics included."""
    decay = (ema_decay_at(state.step, max_ema_decay) if ema_warmup
             else jnp.float32(max_ema_decay))
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if teacher_batch_stats is None or max_ema_decay == 0:
        ema_batch_stats = ema_update(state.ema_batch_stats, batch_stats, decay)
    else:
        ema_batch_stats = teacher_batch_stats
    return new_state.replace(ema_params=ema_update(state.ema_params, new_state.params, decay),
                             ema_batch_stats=ema_batch_stats)


def train_step(state: TrainState, batch: SSLBatch, key: jax.Array, algorithm: Algorithm,
               ema_decay: float,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of ``algorithm`` (an ``algorithms.<module>.make(...)``) on an augmented,
    normalised batch, then ``apply_update`` with maximum EMA decay ``ema_decay``; pure
    and jit-able (``algorithm`` and ``ema_decay`` static).

    Use it directly with your own Flax model (``axis_name=None`` on one device), or
    inside ``shard_map``/``pmap`` over ``axis_name`` with each device holding its
    share of ``batch``: gradients, the Eq. (1) normaliser and ``g_X`` are global.
    An algorithm with a ``weight_average`` (fast-SWA) then adds the updated parameters
    to its average in ``algorithm_state`` when the new step is an averaging step.
    """
    result = algorithm.gradients(state, batch, key, axis_name)
    new_state = apply_update(state, result.grads, result.batch_stats, ema_decay,
                             algorithm.ema_warmup, result.ema_batch_stats)
    if result.algorithm_state is not None:
        new_state = new_state.replace(algorithm_state=result.algorithm_state)
    if algorithm.weight_average is not None:
        new_state = new_state.replace(algorithm_state=averaged(
            WeightAverage(*new_state.algorithm_state), new_state.params, new_state.step,
            algorithm.weight_average))
    return new_state, result.metrics


def step_keys(key: jax.Array, step: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """From the run's ``key``: the data key (the same at every step: the sampler folds
    the epoch into its permutations and the step into its augmentations, so each pool
    is read once per epoch) and the key of the update of the step that starts at
    ``step``. A resumed run repeats both."""
    k_data, k_update = jax.random.split(key)
    return k_data, jax.random.fold_in(k_update, step)


def device_train_step(state: TrainState, data: DeviceData, key: jax.Array, *,
                      sampler: SamplerSpec, algorithm: Algorithm,
                      ema_decay: float) -> tuple[TrainState, dict[str, jax.Array]]:
    """The per-device program step over ``AXIS``: draw and augment this device's share
    of the batch on the device (``sampler``), then ``train_step`` of ``algorithm``.
    ``key`` is the run's key (``step_keys``)."""
    k_data, k_step = step_keys(key, state.step)
    batch = sample_batch(data, k_data, state.step, sampler, axis_name=AXIS)
    return train_step(state, batch, k_step, algorithm, ema_decay, axis_name=AXIS)
