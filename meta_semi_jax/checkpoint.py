"""Checkpoints of a run with orbax: the whole train state and the loop's bookkeeping.

A checkpoint holds the train state (parameters, BatchNorm statistics, optimiser state,
EMA, step) as a host copy, so the same files restore under ``shard_map`` or ``pmap``
and on any device count, and a JSON record of the loop (best validation so far, the
config fields a resume must not change). The data order and all randomness are
functions of (seed, step), so restoring the state resumes the run exactly. Saves are
asynchronous: training continues while orbax writes.

Which checkpoints stay: the latest ``max_checkpoints`` and, besides them, the one of
the evaluation with the best validation accuracy (orbax's ``best_fn`` and its
preservation policies; ``best_rank``). The loop saves a checkpoint at every evaluation
that improves on the best, so the best-validation model is always on disk.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from meta_semi_jax import algorithms
from meta_semi_jax.config_fields import FIXED_ON_RESUME
from meta_semi_jax.state import TrainState


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointChoiceError(ValueError):
    """A ``--checkpoint`` that names no kept checkpoint; the message is one line."""


def best_metrics(step: int, best_step: int, best_val_accuracy: float) -> dict[str, Any]:
    """The metrics saved with checkpoint ``step``: the best evaluation so far."""
    return {"step": step, "best_step": best_step, "val_accuracy": best_val_accuracy}


def best_rank(metrics: dict[str, Any]) -> float:
    """orbax's ``best_fn``: a checkpoint saved at the best evaluation so far ranks by its
    validation accuracy, every other one below all of them. Each new best is strictly
    better than the one before, so the top-ranked checkpoint is the run's best."""
    return float(metrics["val_accuracy"]) if metrics["step"] == metrics["best_step"] else -1.0


def open_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
    """The run's checkpoints: the latest ``max_to_keep`` and the best (``best_rank``)."""
    policies = ocp.checkpoint_managers
    keep = policies.AnyPreservationPolicy([
        policies.LatestN(n=max_to_keep),
        policies.BestN(get_metric_fn=best_rank, n=1, keep_checkpoints_without_metrics=False)])
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(best_fn=best_rank, best_mode="max",
                                             preservation_policy=keep, create=True,
                                             enable_async_checkpointing=True))


def open_read_only(workdir: str) -> ocp.CheckpointManager:
    """The run's checkpoints for reading (evaluate, predict, export); changes nothing."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise CheckpointChoiceError(f"{workdir} has no checkpoints (no {directory})")
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, best_fn=best_rank, best_mode="max"))


CHECKPOINT_CHOICES = "best, latest or a step number"


def chosen_step(manager: ocp.CheckpointManager, which: str) -> int:
    """The step of the checkpoint ``which`` names: ``best`` (the best-validation
    model), ``latest``, or a step number among the kept ones."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointChoiceError(f"{manager.directory} holds no complete checkpoint")
    if which == "latest":
        return max(steps)
    if which == "best":
        best = manager.best_step()
        metrics = None if best is None else manager.metrics(best)
        if metrics is None or best_rank(metrics) < 0:
            raise CheckpointChoiceError(
                f"{manager.directory} keeps no best-validation checkpoint (its checkpoints "
                f"predate them); use --checkpoint=latest or one of the steps {sorted(steps)}")
        return best
    if not which.isdigit():
        raise CheckpointChoiceError(f"--checkpoint={which}: it must be {CHECKPOINT_CHOICES}")
    if int(which) not in steps:
        raise CheckpointChoiceError(f"--checkpoint={which}: no checkpoint of that step; the "
                                    f"kept steps are {sorted(steps)}")
    return int(which)


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
         loop: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Starts writing checkpoint ``step`` (returns before the files are complete);
    ``metrics``: ``best_metrics`` of the step."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                               loop=ocp.args.JsonSave(loop)),
                 metrics=metrics)


def latest_loop_record(manager: ocp.CheckpointManager) -> dict[str, Any] | None:
    """The loop record of the latest complete checkpoint, after reading its whole state
    once without a target (so a damaged checkpoint is found before any compute)."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()))
    return restored.loop


def restore_step(manager: ocp.CheckpointManager, step: int,
                 host_template: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Checkpoint ``step`` as (host state shaped like ``host_template``, loop record)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, host_template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()))
    return restored.state, restored.loop


def read_state(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The train state of checkpoint ``step`` as orbax's nested dicts, read without a
    template (no model needed: export, predict)."""
    try:
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore())).state
    except Exception as e:  # orbax raises many types for damaged files
        raise unreadable(manager, step, e) from None


def unreadable(manager: ocp.CheckpointManager, step: int,
               error: Exception) -> CheckpointChoiceError:
    """The one-line error of a checkpoint that the reading commands cannot read."""
    return CheckpointChoiceError(f"the checkpoint at step {step} in {manager.directory} "
                                 f"cannot be read ({type(error).__name__})")


class EvaluatedModelError(ValueError):
    """A run whose evaluated model is not the EMA model that ``ema_variables`` reads, or
    whose config.json cannot tell; the message is one line."""


def check_evaluated_model_is_ema(config: ml_collections.ConfigDict, num_classes: int,
                                 action: str) -> None:
    """Refuses algorithms whose evaluated model is a weight average (Mean Teacher +
    fast-SWA, ``build.evaluated_model``), not the EMA model; ``action`` names what is
    refused ("export", "prediction")."""
    try:
        algorithm = algorithms.from_config(config, num_classes)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise EvaluatedModelError(f"the run's config.json cannot be used "
                                  f"({type(e).__name__}: {e})") from None
    if algorithm.weight_average is not None:
        raise EvaluatedModelError(
            f"{action} of {config.algorithm} runs is not supported yet: their evaluated "
            f"model is a weight average whose BatchNorm statistics are recomputed from data")


def ema_variables(workdir: str, which: str) -> tuple[int, dict[str, Any]]:
    """(step, ``{"params", "batch_stats"}`` of the EMA model) of the checkpoint in
    ``workdir`` that ``which`` names (``chosen_step``), read without changing anything."""
    manager = open_read_only(workdir)
    try:
        step = chosen_step(manager, which)
        state = read_state(manager, step)
    finally:
        manager.close()
    return step, {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
