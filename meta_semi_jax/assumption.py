"""The Monte-Carlo estimate of Assumption 1's ratio (paper Fig. 2), a diagnostic of any
algorithm that offers the assumption's two sides (``Algorithm.assumption_terms``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from meta_semi_jax.algorithms.common import AssumptionTerms
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.sampler import SamplerSpec, sample_batch
from meta_semi_jax.parallel import AXIS
from meta_semi_jax.state import TrainState

ASSUMPTION_STREAM = 0x5EED  # separates the ratio's random batches from the training ones


def device_assumption_ratio(state: TrainState, data: DeviceData, key: jax.Array, *,
                            sampler: SamplerSpec, terms: AssumptionTerms,
                            num_samples: int) -> dict[str, jax.Array]:
    """``E ||grad L_meta||^2 / ||grad E G(X~)||^2`` over ``num_samples`` random batches
    drawn as ``sampler`` says with the run's ``key`` and the current step (not the
    training batches'); ``terms`` gives both sides for one batch. A per-device program
    over ``AXIS``, like the training step."""
    key = jax.random.fold_in(jax.random.fold_in(key, state.step), ASSUMPTION_STREAM)

    def accumulate(carry, index):
        k_data, k_step = jax.random.split(jax.random.fold_in(key, index))
        batch = sample_batch(data, k_data, jnp.int32(0), sampler, axis_name=AXIS)
        squared, g_labeled = terms(state, batch, k_step, AXIS)
        return (carry[0] + squared, jax.tree.map(jnp.add, carry[1], g_labeled)), None

    zeros = (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, state.params))
    (squared_sum, g_sum), _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_samples))
    mean_g = jax.tree.map(lambda g: g / num_samples, g_sum)
    return {"assumption_ratio": squared_sum / num_samples
            / optax.tree.norm(mean_g, squared=True)}
