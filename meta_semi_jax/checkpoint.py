"""Checkpoints of a run with orbax: the whole train state and the loop's bookkeeping.

A checkpoint holds the train state (parameters, BatchNorm statistics, optimiser state,
EMA, step) as a host copy, so the same files restore under ``shard_map`` or ``pmap``
and on any device count, and a JSON record of the loop (best validation so far, the
config fields a resume must not change). The data order and all randomness are
functions of (seed, step), so restoring the state resumes the run exactly. Saves are
asynchronous: training continues while orbax writes.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from meta_semi_jax.config_fields import FIXED_ON_RESUME
from meta_semi_jax.state import TrainState


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def open_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=True))


def fixed_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The experiment-defining fields, with the running algorithm's own values
    (``config.<algorithm>``) when it has any."""
    fields = {field: config[field] for field in FIXED_ON_RESUME}
    if isinstance(config.get(config.algorithm), ml_collections.ConfigDict):
        fields[config.algorithm] = config[config.algorithm].to_dict()
    return fields


def changed_fields(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """Experiment-defining fields whose value differs from the checkpoint's."""
    return [f"{field}: {saved.get(field)!r} -> {value!r}"
            for field, value in fixed_fields(config).items() if saved.get(field) != value]


def save(manager: ocp.CheckpointManager, step: int, host_state: TrainState,
         loop: dict[str, Any]) -> None:
    """Starts writing checkpoint ``step`` (returns before the files are complete)."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                               loop=ocp.args.JsonSave(loop)))


def latest_loop_record(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The loop record of the latest complete checkpoint, after reading its whole state
    once without a target (so a damaged checkpoint is found before any compute)."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()))
    return restored.loop


def restore_latest(manager: ocp.CheckpointManager,
                   host_template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The latest complete checkpoint as (host state, loop record), or None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, host_template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()))
    return restored.state, restored.loop
