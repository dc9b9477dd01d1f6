"""BatchNorm statistics recomputed for weights that no training pass produced (fast-SWA's
average, ``weight_average.py``), and the program that gives the model fast-SWA
evaluates.

As fast-SWA's ``update_batchnorm`` (github.com/benathi/fastswa-semi-sup ``main.py``):
train-mode passes of the averaged weights over training batches. Here the statistics
are the cumulative average of the batches' own statistics (SWA's ``bn_update``,
PyTorch's ``swa_utils.update_bn``), whatever the model's BatchNorm momentum.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from meta_semi_jax.algorithms.common import device_key, forward_train, pmean_if
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.sampler import SamplerSpec, sample_batch
from meta_semi_jax.parallel import AXIS
from meta_semi_jax.state import TrainState
from meta_semi_jax.weight_average import FastSWA, WeightAverage

# Folded into the run's key for the batches of the BatchNorm recompute.
BN_STREAM = 0xB4


def batch_statistics(state: TrainState, params: Any, inputs: jax.Array,
                     rng: jax.Array | None = None) -> Any:
    """The statistics that a train-mode pass of ``params`` on ``inputs`` takes from the
    batch, for every BatchNorm, in ``batch_stats``' tree (global over the devices when
    BatchNorm is synchronised). flax updates its running statistics as ``r <- m r + (1 -
    m) s``; its derivative with respect to ``r`` (one forward-mode product, which costs
    nothing beyond the pass) is the momentum ``m``, so ``s = update(0) / (1 - m)`` for
    any model's momentum."""
    def updated(running: Any) -> Any:
        return forward_train(state, params, inputs, running, rng)[1]

    zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
    ones = jax.tree.map(jnp.ones_like, state.batch_stats)
    from_zero, momentum = jax.jvp(updated, (zeros,), (ones,))
    return jax.tree.map(lambda u, m: u / (1.0 - m), from_zero, momentum)


def recomputed_batch_stats(state: TrainState, params: Any,
                           batch_inputs: Callable[[jax.Array], jax.Array], num_batches: int,
                           key: jax.Array, axis_name: str | None) -> Any:
    """The cumulative average, over ``num_batches`` training batches
    ``batch_inputs(i)``, of the batch statistics of ``params``' train-mode passes
    (``batch_statistics``, averaged over the devices); ``key`` draws a noisy network's
    noise, per device."""
    def add_batch(i: jax.Array, mean: Any) -> Any:
        rng = device_key(jax.random.fold_in(key, i), axis_name)
        stats = pmean_if(batch_statistics(state, params, batch_inputs(i), rng), axis_name)
        return jax.tree.map(lambda a, s: a + (s - a) / (i + 1).astype(a.dtype), mean, stats)

    zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
    return lax.fori_loop(0, num_batches, add_batch, zeros)


def device_average_variables(state: TrainState, data: DeviceData, key: jax.Array, *,
                             sampler: SamplerSpec, spec: FastSWA) -> tuple[Any, Any]:
    """The per-device program (over ``AXIS``) of the model fast-SWA evaluates: the
    averaged parameters with BatchNorm statistics recomputed over ``spec.bn_batches``
    batches of the training stream, each ``Concat(labeled, unlabeled)`` as the
    student's pass sees it (their ``update_batchnorm`` over the train loader); before
    the first averaging point, the EMA model's ``(ema_params, ema_batch_stats)``. The
    batches are drawn with the run's ``key`` and the state's step, so a resumed run
    recomputes the same statistics."""
    average = WeightAverage(*state.algorithm_state)
    bn_key = jax.random.fold_in(jax.random.fold_in(key, BN_STREAM), state.step)
    data_key, noise_key = jax.random.split(bn_key)
    one_view = dataclasses.replace(sampler, unlabeled_views=1)

    def batch_inputs(i: jax.Array) -> jax.Array:
        batch = sample_batch(data, data_key, i, one_view, axis_name=AXIS)
        return jnp.concatenate([batch.labeled_images, batch.unlabeled_images])

    def recomputed() -> tuple[Any, Any]:
        stats = recomputed_batch_stats(state, average.params, batch_inputs, spec.bn_batches,
                                       noise_key, AXIS)
        return average.params, jax.tree.map(lambda s, e: s.astype(e.dtype), stats,
                                            state.ema_batch_stats)

    return lax.cond(average.num_points > 0, recomputed,
                    lambda: (state.ema_params, state.ema_batch_stats))
