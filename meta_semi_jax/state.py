"""The train state: parameters, BatchNorm statistics, optimiser state and their EMA."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax's TrainState plus BatchNorm statistics and the EMA model of Sec. 3.3.

    ``apply_fn`` must accept ``(variables, inputs, train=bool, mutable=...)`` like
    ``flax.linen.Module.apply`` for a module whose ``__call__(x, train)`` uses
    ``nn.BatchNorm(use_running_average=not train)``. Models without BatchNorm
    simply have an empty ``batch_stats``.
    """
    batch_stats: Any
    ema_params: Any
    ema_batch_stats: Any
    # What an algorithm keeps from step to step besides the model (Temporal Ensembling's
    # ensemble predictions), replicated like the rest; None for most algorithms.
    algorithm_state: Any = None
    # The same model computing in float32, when ``apply_fn`` computes in lower precision:
    # Meta-Semi takes its labeled gradient g_X (the direction of every score) from it.
    float32_apply_fn: Callable[..., Any] | None = flax.struct.field(pytree_node=False,
                                                                    default=None)


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The variable dict ``apply`` expects."""
    return {"params": params, "batch_stats": batch_stats}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array, sample_inputs: jax.Array) -> TrainState:
    """Initialises ``model`` on ``sample_inputs``; the EMA starts equal to the model."""
    variables = model.init(key, sample_inputs, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    # Separate buffers for the EMA copies, so that the state can be donated to a step.
    copy = functools.partial(jax.tree.map, jnp.copy)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=batch_stats, ema_params=copy(params),
                             ema_batch_stats=copy(batch_stats))
