"""The training loop: steps, logs, evaluations and checkpoints, over a run set up by
``build.build_training``, or over a set of parallel runs trained by one vmapped step
(``run_set``), each with its own evaluations, logs and checkpoints.

Evaluation protocol: the EMA model (fast-SWA's average for Mean Teacher + fast-SWA:
``build.evaluated_model``) is evaluated on the validation split every
``eval_every_steps``; the test split is evaluated at the same steps for the learning
curves (``metrics.jsonl``) and reported for the final model and for the evaluation with
the best validation accuracy; it never selects anything.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Sequence
from typing import Any, cast

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from meta_semi_jax import __version__, checkpoint, data as data_lib, run_set
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.build import DataSource, Training, build_training, host_pools, place_data
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data.host_stream import HostStream
from meta_semi_jax.logs import RunLog
from meta_semi_jax.parallel import DataParallel, bytes_on_this_process
from meta_semi_jax.run_dir import damaged_checkpoint, write_json
from meta_semi_jax.run_set import RunAxis
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

    def line(self, step: int, runs_scalars: Sequence[dict[str, float | None]]) -> str:
        """The line after ``step``, with the loss and share selected of each run."""
        now = time.time()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        eta = (self._total - step) / rate if rate > 0 else float("inf")
        return (f"step {step}/{self._total}  loss {_joined(runs_scalars, 'loss', 4)}  "
                f"selected {_joined(runs_scalars, 'selected', 3)}  {rate:.1f} steps/s  "
                f"ETA {eta / 60:.1f} min")


def _joined(runs_scalars: Sequence[dict[str, float | None]], key: str, digits: int) -> str:
    """One scalar of each run, joined by '/'; '-' where a run does not have it."""
    return "/".join("-" if s.get(key) is None else f"{s[key]:.{digits}f}"
                    for s in runs_scalars)


class StopSignal:
    """Turns SIGTERM (a preemption notice) into the step after which every process saves
    a checkpoint and stops; the loop asks ``reached`` once after each step.

    One process: a Python SIGTERM handler sets a flag, read after each step.

    Several processes (``jax.distributed.initialize``): SIGTERM may reach only some of
    them, yet all must save the same step (orbax's save is collective). JAX's preemption
    sync manager, started by ``jax.distributed.initialize``, agrees on it: its C++
    SIGTERM handler posts the notice to the coordination service, every process then
    sends the last step it passed to ``reached_preemption_sync_point`` and the largest
    plus one becomes the sync point, at which that call returns True on every process.
    Each call only reads a local counter (no device or host synchronisation). No Python
    handler is installed then: ``signal.signal`` would replace the C++ handler, and no
    other process would learn of the notice. Which process got SIGTERM is not known
    here, hence ``notice``'s wording.
    """

    def __init__(self, step: int):
        """``step``: the step the loop starts after (the resumed checkpoint's, or 0)."""
        self._processes = jax.process_count()
        self._received = False
        if self._processes == 1:
            self.notice = "SIGTERM"
            signal.signal(signal.SIGTERM, self._handle)
        else:
            self.notice = f"SIGTERM to at least one of the {self._processes} processes"
            # Every process's counter starts at ``step``: a notice during the first
            # step's compilation then stops all at the first step (with the counter
            # still at its initial 0, a resumed run would never reach the sync point 1).
            multihost_utils.reached_preemption_sync_point(step)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self._received = True

    def reached(self, step: int) -> bool:
        """Whether to save a checkpoint after ``step`` and stop; the same answer on every
        process. Called once per step, in step order."""
        if self._processes == 1:
            return self._received
        return multihost_utils.reached_preemption_sync_point(step)


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


def resume_step(managers: Sequence[ocp.CheckpointManager]) -> int | None:
    """The step to resume from: the latest step of which every run has a checkpoint (a
    single run's latest), or None for a fresh start. Checkpoints of a run of a set past
    that step (a save that the other runs did not complete) are deleted: the resumed
    runs recompute them exactly."""
    steps = [set(manager.all_steps()) for manager in managers]
    common = set.intersection(*steps)
    if not common:
        if any(steps):
            raise ConfigError(
                f"the runs in {os.path.dirname(str(managers[0].directory.parent))} have no "
                f"checkpoint step in common ({[sorted(s) for s in steps]}); use another "
                f"--workdir")
        return None
    step = max(common)
    for manager, own in zip(managers, steps, strict=True):
        for later in sorted(s for s in own if s > step):
            logging.warning("deleting the checkpoint at step %d in %s: the other runs of the "
                            "set resume from step %d", later, manager.directory, step)
            manager.delete(later)
    return step


def restore(manager: ocp.CheckpointManager, training: Training,
            step: int | None) -> tuple[TrainState, LoopState]:
    """The state and loop bookkeeping of checkpoint ``step``, or the fresh ones (None)."""
    if step is None:
        return training.state, LoopState()
    dp = training.dp
    try:
        host_state, record = checkpoint.restore_step(manager, step,
                                                     dp.unreplicate(training.state))
    except Exception as e:  # orbax raises many types for damaged files
        raise damaged_checkpoint(manager, "restored", e) from None
    loop = LoopState.from_record(record)
    logging.info("resumed from the checkpoint at step %d in %s", loop.step, manager.directory)
    return dp.replicate(host_state), loop


@dataclasses.dataclass
class Run:
    """One run's part of the loop: its config, data, files and bookkeeping (a run set
    has several, trained by one step: ``run_set``)."""
    config: ml_collections.ConfigDict
    workdir: str
    ssl: data_lib.SSLData
    manager: ocp.CheckpointManager
    training: Training
    data: DataSource  # its training pools on the devices (fast-SWA's average, Assumption 1)
    loop: LoopState
    run_log: RunLog
    counts: SelectionCounts  # summed between evaluations
    earlier_seconds: float  # spent by the runs this one resumes
    name: str  # how the console names it: "" for a single run, "run_<i>: " in a set

    def wall_seconds(self, start: float) -> float:
        return self.earlier_seconds + time.time() - start


def start_run(config: ml_collections.ConfigDict, workdir: str, ssl: data_lib.SSLData,
              manager: ocp.CheckpointManager, training: Training, data: DataSource,
              loop: LoopState, name: str) -> Run:
    """A run's records, opened where its restored ``loop`` left them."""
    dp = training.dp
    logging.info("%s on %s with %d labels (split %s, seed %d), %d unlabeled, %d devices "
                 "(%s)", config.algorithm, config.dataset, config.num_labels,
                 ssl.split.digest(), config.seed, len(ssl.unlabeled_labels), dp.num_devices,
                 config.parallel)
    return Run(config, workdir, ssl, manager, training, data, loop,
               RunLog(workdir, last_step=loop.step), SelectionCounts(dp, loop.selection_counts),
               loop.wall_seconds, name)


def evaluate_run(run: Run, state: TrainState, step: int, metrics: dict[str, jax.Array],
                 start: float) -> bool:
    """The evaluation after ``step`` of one run (its slice of the state): validation and
    test accuracy, the diagnostics, one line of metrics.jsonl. Returns whether it is the
    best validation accuracy so far."""
    training, loop = run.training, run.loop
    dp = training.dp
    evaluated = training.evaluated(state, run.data)
    loop.val_accuracy = val_accuracy = training.val_eval.accuracy(evaluated)
    # The test error is logged for the learning curves only; nothing selects on it.
    record = {"step": step, "val_accuracy": val_accuracy,
              "test_accuracy": training.test_eval.accuracy(evaluated),
              "wall_seconds": run.wall_seconds(start), **host_metrics(metrics, dp),
              **run.counts.take()}
    new_best = val_accuracy > loop.best.val_accuracy
    if new_best:
        loop.best = BestEvaluation(val_accuracy, step, record["test_accuracy"])
    if training.ratio_fn is not None:
        record.update(host_metrics(training.ratio_fn(state, run.data(), training.run_key),
                                   dp))
    if training.probe is not None:
        record.update(training.probe.metrics(state))
    run.run_log.evaluation(record)
    logging.info("%sstep %d  val accuracy %.2f%%  (best %.2f%% at step %d)",
                 run.name, step, val_accuracy, loop.best.val_accuracy, loop.best.step)
    return new_best


def save_run(run: Run, state: TrainState, step: int, start: float) -> None:
    """Starts writing run's checkpoint ``step`` with its loop bookkeeping."""
    loop = run.loop
    loop.step, loop.wall_seconds = step, run.wall_seconds(start)
    loop.selection_counts = run.counts.on_host()
    checkpoint.save(run.manager, step, run.training.dp.unreplicate(state),
                    loop.record(run.config),
                    checkpoint.best_metrics(step, loop.best.step, loop.best.val_accuracy))


def finish_run(run: Run, state: TrainState, start: float) -> dict[str, Any]:
    """results.json of a run whose last step is done (its final state)."""
    training = run.training
    results = final_results(run.config, run.ssl, run.loop,
                            training.test_eval.accuracy(training.evaluated(state, run.data)),
                            best_checkpoint_test_accuracy(run, state),
                            training.dp.num_devices, run.wall_seconds(start))
    run.run_log.close()
    write_json(run.workdir, "results.json", results)
    logging.info("%sfinal test error %.2f%% (best-validation model: %.2f%%)", run.name,
                 results["test_error"], results["best_val_test_error"])
    return results


def place_pools(axis: RunAxis, config: ml_collections.ConfigDict,
                ssls: Sequence[data_lib.SSLData],
                stream: HostStream | None) -> tuple[DeviceData, list[DataSource]]:
    """The training pools the step reads, on the devices (``build.place_data``; a set's
    stacked along the run axis and placed once, ``RunAxis.place``), and each run's
    source of its own (a set's run takes its slice only when asked)."""
    if axis.num_runs == 1:
        data = place_data(axis.dp, ssls[0], config, stream)
        sources: list[DataSource] = [lambda: data]
    else:
        data = axis.place([host_pools(ssl) for ssl in ssls])
        sources = [functools.partial(axis.take, data, i) for i in range(axis.num_runs)]
    logging.info("unlabeled images (%s): %d bytes on this process's devices",
                 config.unlabeled_placement, bytes_on_this_process(data.unlabeled_images))
    return data, sources


def run_training(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                 ssls: Sequence[data_lib.SSLData], managers: Sequence[ocp.CheckpointManager],
                 start: float) -> list[dict[str, Any]]:
    """The training loop of one run, or of a set of parallel runs trained by one vmapped
    step (``run_set``), with the evaluations and checkpoints of each; writes each run's
    metrics.jsonl and, at the end, results.json. ``start``: when this process began
    (time.time()). Returns each run's results."""
    trainings = [build_training(c, s) for c, s in zip(configs, ssls, strict=True)]
    dp = trainings[0].dp
    axis = RunAxis(dp, len(trainings))
    step_fn = run_set.joint_step(trainings)
    resumed = resume_step(managers)
    restored = [restore(m, t, resumed) for m, t in zip(managers, trainings, strict=True)]
    device_data, sources = place_pools(axis, configs[0], ssls, trainings[0].stream)
    names = [""] if len(trainings) == 1 else [f"run_{i}: " for i in range(len(trainings))]
    runs = [start_run(c, d, s, m, t, source, loop, name)
            for c, d, s, m, t, source, (_, loop), name
            in zip(configs, workdirs, ssls, managers, trainings, sources, restored, names,
                   strict=True)]
    state = axis.stack([state for state, _ in restored])
    run_keys = axis.stack([t.run_key for t in trainings])
    stream = trainings[0].stream  # the host placement: single runs only (config_check)
    config = configs[0]  # the fields that all runs of a set share
    first_step = runs[0].loop.step + 1
    stop = StopSignal(first_step - 1)
    progress = Progress(config.num_train_steps)
    for step in range(first_step, config.num_train_steps + 1):
        if stream is not None:  # the batch of the step that starts at state.step
            device_data = stream.with_batch(device_data, step - 1)
        state, metrics = step_fn(state, device_data, run_keys)
        run_metrics = [run.counts.add(m) for run, m in zip(runs, axis.split(metrics),
                                                            strict=True)]
        if step == first_step:
            jax.block_until_ready(metrics)
            logging.info("first step (with compilation) took %.1f s", time.time() - start)
            progress.restart(step)
        last = step == config.num_train_steps
        log_due = itstime(step, config.log_every_steps, config.num_train_steps)
        stopping = stop.reached(step)  # once: a later SIGTERM waits for the next step
        checkpoint_due = (itstime(step, config.checkpoint_every_steps, config.num_train_steps)
                          or stopping)
        if log_due or checkpoint_due:
            scalars = [host_metrics(m, dp) for m in run_metrics]
            for run, run_scalars in zip(runs, scalars, strict=True):
                check_finite(run_scalars, step, run.manager)
                if log_due:
                    run.run_log.scalars(step, run_scalars, "train")
            if log_due:
                logging.info("%s", progress.line(step, scalars))
        if itstime(step, config.eval_every_steps, config.num_train_steps):
            for i, run in enumerate(runs):
                if evaluate_run(run, axis.take(state, i), step, run_metrics[i], start):
                    checkpoint_due = True  # the best-validation model is kept on disk
        if checkpoint_due:  # every run saves, so that they resume together
            for i, run in enumerate(runs):
                save_run(run, axis.take(state, i), step, start)
        if stopping and not last:
            for run in runs:
                run.manager.wait_until_finished()
            raise Preempted(f"{stop.notice}: saved a checkpoint at step {step} in "
                            f"{', '.join(str(run.manager.directory) for run in runs)}; run "
                            f"the same command to resume")
    return [finish_run(run, axis.take(state, i), start) for i, run in enumerate(runs)]


def best_checkpoint_test_accuracy(run: Run, state: TrainState) -> float:
    """Test accuracy of ``run``'s best-validation model, evaluated on its kept checkpoint.
    A run resumed from checkpoints that predate best-model tracking may have lost that
    checkpoint; its test accuracy as measured at the time is used then."""
    manager, training, loop = run.manager, run.training, run.loop
    manager.wait_until_finished()
    if manager.best_step() != loop.best.step:
        logging.warning("the best-validation checkpoint (step %d) was not kept; reporting "
                        "its test accuracy as measured during training", loop.best.step)
        return cast(float, loop.best.test_accuracy)
    dp = training.dp
    # ``state`` (the final one) shapes the restore: the step consumed ``training.state``.
    host_state, _ = checkpoint.restore_step(manager, loop.best.step, dp.unreplicate(state))
    return training.test_eval.accuracy(training.evaluated(dp.replicate(host_state), run.data))


def final_results(config: ml_collections.ConfigDict, ssl: data_lib.SSLData, loop: LoopState,
                  test_accuracy: float, best_test_accuracy: float, num_devices: int,
                  wall_seconds: float) -> dict[str, Any]:
    """results.json: the final model's test error and the best-validation model's (the
    test accuracy of the best checkpoint, ``best_checkpoint_test_accuracy``)."""
    return {
        "algorithm": config.algorithm, "dataset": config.dataset, "model": config.model,
        "num_labels": config.num_labels, "seed": config.seed, "split_seed": config.split_seed,
        "split_hash": ssl.split.digest(), "step": config.num_train_steps,
        "test_accuracy": test_accuracy, "test_error": 100.0 - test_accuracy,
        "val_accuracy": loop.val_accuracy,
        "best_val_accuracy": loop.best.val_accuracy, "best_val_step": loop.best.step,
        "best_val_test_error": 100.0 - best_test_accuracy,
        "num_devices": num_devices, "parallel": config.parallel,
        "wall_seconds": wall_seconds, "version": __version__,
    }
