"""The training loop: steps, logs, evaluations and checkpoints, over a run set up by
``build.build_training``.

Evaluation protocol: the EMA model (fast-SWA's average for Mean Teacher + fast-SWA:
``build.evaluated_model``) is evaluated on the validation split every
``eval_every_steps``; the test split is evaluated at the same steps for the learning
curves (``metrics.jsonl``) and reported for the final model and for the evaluation with
the best validation accuracy; it never selects anything.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, cast

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from meta_semi_jax import __version__, checkpoint, data as data_lib
from meta_semi_jax.build import Training, build_training
from meta_semi_jax.logs import RunLog
from meta_semi_jax.parallel import DataParallel, bytes_on_this_process
from meta_semi_jax.run_dir import damaged_checkpoint, write_json
from meta_semi_jax.selection import SelectionCounts
from meta_semi_jax.state import TrainState


class NonFiniteError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


def itstime(step: int, every: int, num_steps: int) -> bool:
    """Whether an every-``every``-steps action (log, evaluation, checkpoint) is due after
    ``step``: at each multiple of ``every``, and after the last of ``num_steps``."""
    return step % every == 0 or step == num_steps


@dataclasses.dataclass
class BestEvaluation:
    """The evaluation with the best validation accuracy so far."""
    val_accuracy: float = -1.0
    step: int = 0
    test_accuracy: float | None = None  # None before the first evaluation


@dataclasses.dataclass
class LoopState:
    """The loop's bookkeeping, saved with each checkpoint (``record``) and restored on
    resume (``from_record``). ``wall_seconds``: the run's time up to the last save,
    the runs it resumes included. ``selection_counts``: the sums of the pseudo-label
    counts since the last evaluation (``selection.SelectionCounts``)."""
    step: int = 0
    best: BestEvaluation = dataclasses.field(default_factory=BestEvaluation)
    val_accuracy: float | None = None
    wall_seconds: float = 0.0
    selection_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def record(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The checkpoint's JSON record, with the fields a resume must keep."""
        return {"step": self.step, "best": dataclasses.asdict(self.best),
                "val_accuracy": self.val_accuracy, "wall_seconds": self.wall_seconds,
                "selection_counts": self.selection_counts,
                "config": checkpoint.fixed_fields(config)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LoopState:
        return cls(step=record["step"], best=BestEvaluation(**record["best"]),
                   val_accuracy=record["val_accuracy"], wall_seconds=record["wall_seconds"],
                   selection_counts=record.get("selection_counts", {}))


class Progress:
    """The console's progress line: steps/s since the last line, and the time left."""

    def __init__(self, total_steps: int):
        self._total = total_steps
        self.restart(0)

    def restart(self, step: int) -> None:
        self._time, self._step = time.time(), step

    def line(self, step: int, scalars: dict[str, float | None]) -> str:
        now = time.time()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        selected = f"{scalars['selected']:.3f}" if "selected" in scalars else "-"
        eta = (self._total - step) / rate if rate > 0 else float("inf")
        return (f"step {step}/{self._total}  loss {scalars['loss']:.4f}  selected {selected}  "
                f"{rate:.1f} steps/s  ETA {eta / 60:.1f} min")


class StopSignal:
    """Turns SIGTERM (a preemption notice) into a flag the loop checks after each step."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.received = True


GUARDED_METRICS = ("loss", "labeled_loss")


def host_metrics(metrics: dict[str, jax.Array], dp: DataParallel) -> dict[str, float | None]:
    """Scalars on the host; a diagnostic with nothing to measure (NaN) becomes None."""
    values = {k: float(v) for k, v in dp.unreplicate(metrics).items()}
    return {k: v if np.isfinite(v) or k in GUARDED_METRICS else None
            for k, v in values.items()}


def check_finite(scalars: dict[str, float | None], step: int,
                 manager: ocp.CheckpointManager) -> None:
    """Raises ``NonFiniteError`` when a training loss is not finite (diagnostics may be
    undefined); ``host_metrics`` never turns a guarded metric into None."""
    if all(np.isfinite(cast(float, scalars[k])) for k in GUARDED_METRICS if k in scalars):
        return
    good = manager.latest_step()
    raise NonFiniteError(
        f"non-finite training metrics by step {step} ({scalars}); " + (
            f"the last good checkpoint is step {good} in {manager.directory}"
            if good is not None else "no checkpoint was written yet"))


def restore(manager: ocp.CheckpointManager, training: Training) -> tuple[TrainState, LoopState]:
    """The state and loop bookkeeping of the latest checkpoint, or the fresh ones."""
    dp = training.dp
    try:
        restored = checkpoint.restore_latest(manager, dp.unreplicate(training.state))
    except Exception as e:  # orbax raises many types for damaged files
        raise damaged_checkpoint(manager, "restored", e) from None
    if restored is None:
        return training.state, LoopState()
    host_state, record = restored
    loop = LoopState.from_record(record)
    logging.info("resumed from the checkpoint at step %d", loop.step)
    return dp.replicate(host_state), loop


def run_training(config: ml_collections.ConfigDict, workdir: str, ssl: data_lib.SSLData,
                 manager: ocp.CheckpointManager, start: float) -> dict[str, Any]:
    """The training loop with its evaluations and checkpoints; writes metrics.jsonl and,
    at the end, results.json. ``start``: when this run began (time.time())."""
    training = build_training(config, ssl)
    dp = training.dp
    state, loop = restore(manager, training)
    device_data = training.data
    run_log = RunLog(workdir, last_step=loop.step)
    logging.info("%s on %s with %d labels (split %s), %d unlabeled, %d devices (%s)",
                 config.algorithm, config.dataset, config.num_labels, ssl.split.digest(),
                 len(ssl.unlabeled_labels), dp.num_devices, config.parallel)
    logging.info("unlabeled images (%s): %d bytes on this process's devices",
                 config.unlabeled_placement, bytes_on_this_process(device_data.unlabeled_images))
    stop = StopSignal()
    progress = Progress(config.num_train_steps)
    counts = SelectionCounts(dp, loop.selection_counts)  # summed between evaluations
    earlier_seconds = loop.wall_seconds  # spent by the runs this one resumes

    def wall_seconds() -> float:
        return earlier_seconds + time.time() - start

    first_step = loop.step + 1
    for step in range(first_step, config.num_train_steps + 1):
        if training.stream is not None:  # the batch of the step that starts at state.step
            device_data = training.stream.with_batch(device_data, step - 1)
        state, metrics = training.step_fn(state, device_data, training.run_key)
        metrics = counts.add(metrics)
        if step == first_step:
            jax.block_until_ready(metrics)
            logging.info("first step (with compilation) took %.1f s", time.time() - start)
            progress.restart(step)
        last = step == config.num_train_steps
        log_due = itstime(step, config.log_every_steps, config.num_train_steps)
        checkpoint_due = (itstime(step, config.checkpoint_every_steps, config.num_train_steps)
                          or stop.received)
        if log_due or checkpoint_due:
            scalars = host_metrics(metrics, dp)
            check_finite(scalars, step, manager)
            if log_due:
                logging.info("%s", progress.line(step, scalars))
                run_log.scalars(step, scalars, "train")
        if itstime(step, config.eval_every_steps, config.num_train_steps):
            evaluated = training.evaluated(state)
            loop.val_accuracy = val_accuracy = training.val_eval.accuracy(evaluated)
            # The test error is logged for the learning curves only; nothing selects on it.
            record = {"step": step, "val_accuracy": val_accuracy,
                      "test_accuracy": training.test_eval.accuracy(evaluated),
                      "wall_seconds": wall_seconds(), **host_metrics(metrics, dp),
                      **counts.take()}
            if val_accuracy > loop.best.val_accuracy:
                loop.best = BestEvaluation(val_accuracy, step, record["test_accuracy"])
            if training.ratio_fn is not None:
                record.update(host_metrics(
                    training.ratio_fn(state, device_data, training.run_key), dp))
            if training.probe is not None:
                record.update(training.probe.metrics(state))
            run_log.evaluation(record)
            logging.info("step %d  val accuracy %.2f%%  (best %.2f%% at step %d)", step,
                         val_accuracy, loop.best.val_accuracy, loop.best.step)
        if checkpoint_due:
            loop.step, loop.wall_seconds = step, wall_seconds()
            loop.selection_counts = counts.on_host()
            checkpoint.save(manager, step, dp.unreplicate(state), loop.record(config))
        if stop.received and not last:
            manager.wait_until_finished()
            raise Preempted(f"SIGTERM: saved a checkpoint at step {step} in "
                            f"{manager.directory}; run the same command to resume")

    results = final_results(config, ssl, loop,
                            training.test_eval.accuracy(training.evaluated(state)),
                            dp.num_devices, wall_seconds())
    run_log.close()
    write_json(workdir, "results.json", results)
    logging.info("final test error %.2f%% (best-validation model: %.2f%%)",
                 results["test_error"], results["best_val_test_error"])
    return results


def final_results(config: ml_collections.ConfigDict, ssl: data_lib.SSLData, loop: LoopState,
                  test_accuracy: float, num_devices: int,
                  wall_seconds: float) -> dict[str, Any]:
    """results.json: the final model's test error and the best-validation model's."""
    return {
        "algorithm": config.algorithm, "dataset": config.dataset, "model": config.model,
        "num_labels": config.num_labels, "seed": config.seed, "split_seed": config.split_seed,
        "split_hash": ssl.split.digest(), "step": config.num_train_steps,
        "test_accuracy": test_accuracy, "test_error": 100.0 - test_accuracy,
        "val_accuracy": loop.val_accuracy,
        "best_val_accuracy": loop.best.val_accuracy, "best_val_step": loop.best.step,
        # The last step evaluates, so the best evaluation has a test accuracy.
        "best_val_test_error": 100.0 - cast(float, loop.best.test_accuracy),
        "num_devices": num_devices, "parallel": config.parallel,
        "wall_seconds": wall_seconds, "version": __version__,
    }
