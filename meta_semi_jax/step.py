"""The pure training step (one algorithm's gradients, the optimiser update, the EMA) and
the per-device program step that draws its batch on the device first."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from meta_semi_jax.algorithms import ALGORITHMS, HParams, SSLBatch, meta_semi
from meta_semi_jax.data.sampler import DeviceData, sample_batch
from meta_semi_jax.ema import ema_decay_at, ema_update
from meta_semi_jax.parallel import AXIS
from meta_semi_jax.state import TrainState


def apply_update(state: TrainState, grads: Any, batch_stats: Any,
                 max_ema_decay: float) -> TrainState:
    """Optimiser step on ``grads`` (Algorithm 1, line 13), new BatchNorm statistics,
    then the EMA of parameters and statistics with ICT's ramped decay."""
    decay = ema_decay_at(state.step, max_ema_decay)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state.replace(
        ema_params=ema_update(state.ema_params, new_state.params, decay),
        ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, decay))


def train_step(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
               algorithm: str = "meta_semi",
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of ``algorithm`` on an augmented, normalised batch; pure and jit-able.

    Use it directly with your own Flax model (``axis_name=None`` on one device), or
    inside ``shard_map``/``pmap`` over ``axis_name`` with each device holding its
    share of ``batch``: gradients, the Eq. (1) normaliser and ``g_X`` are global.
    """
    result = ALGORITHMS[algorithm](state, batch, key, hparams, axis_name)
    new_state = apply_update(state, result.grads, result.batch_stats, hparams.ema_decay)
    return new_state, result.metrics


ASSUMPTION_STREAM = 0x5EED  # separates the ratio's random batches from the training ones


def config_batch(data: DeviceData, key: jax.Array, step: int | jax.Array,
                 config: ml_collections.ConfigDict, unlabeled_views: int = 1) -> SSLBatch:
    """This device's batch for ``step``, drawn and augmented as ``config`` says, with
    ``unlabeled_views`` augmentations of each unlabeled image."""
    return sample_batch(data, key, step, labeled_batch_size=config.labeled_batch_size,
                        unlabeled_batch_size=config.unlabeled_batch_size,
                        translate=config.translate, flip=config.flip,
                        pad_mode=config.pad_mode,
                        unlabeled_placement=config.unlabeled_placement,
                        unlabeled_views=unlabeled_views, axis_name=AXIS)


def step_keys(key: jax.Array, step: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """From the run's ``key``: the data key (the same at every step: the sampler folds
    the epoch into its permutations and the step into its augmentations, so each pool
    is read once per epoch) and the key of the update of the step that starts at
    ``step``. A resumed run repeats both."""
    k_data, k_update = jax.random.split(key)
    return k_data, jax.random.fold_in(k_update, step)


def device_train_step(state: TrainState, data: DeviceData, key: jax.Array, *,
                      config: ml_collections.ConfigDict,
                      hparams: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
    """The per-device program step over ``AXIS``: draw and augment this device's share
    of the batch on the device, then ``train_step``. ``key`` is the run's key
    (``step_keys``)."""
    k_data, k_step = step_keys(key, state.step)
    batch = config_batch(data, k_data, state.step, config, hparams.unlabeled_views)
    return train_step(state, batch, k_step, hparams, config.algorithm, axis_name=AXIS)


def device_assumption_ratio(state: TrainState, data: DeviceData, key: jax.Array, *,
                            config: ml_collections.ConfigDict, hparams: HParams,
                            num_samples: int) -> dict[str, jax.Array]:
    """Monte-Carlo estimate of the ratio of Assumption 1 (paper Fig. 2),
    ``E ||grad L_meta||^2 / ||grad E G(X~)||^2``, over ``num_samples`` random batches
    drawn with the run's ``key`` and the current step (not the training batches')."""
    key = jax.random.fold_in(jax.random.fold_in(key, state.step), ASSUMPTION_STREAM)

    def accumulate(carry, index):
        k_data, k_step = jax.random.split(jax.random.fold_in(key, index))
        batch = config_batch(data, k_data, jnp.int32(0), config)
        squared, g_labeled = meta_semi.assumption_terms(state, batch, k_step, hparams, AXIS)
        return (carry[0] + squared, jax.tree.map(jnp.add, carry[1], g_labeled)), None

    zeros = (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, state.params))
    (squared_sum, g_sum), _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_samples))
    mean_g = jax.tree.map(lambda g: g / num_samples, g_sum)
    return {"assumption_ratio": squared_sum / num_samples
            / optax.tree.norm(mean_g, squared=True)}
