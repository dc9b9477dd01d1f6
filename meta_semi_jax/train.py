"""The training program: one loop for every algorithm.

``train_and_evaluate(config, workdir)`` checks the config, loads and splits the data,
puts it on the devices, and runs the jit-compiled data-parallel step. Evaluation
protocol: the EMA model is evaluated on the validation split every
``eval_every_steps``; the test split is evaluated at the same steps for the learning
curves (``metrics.jsonl``) and reported for the final model and for the evaluation
with the best validation accuracy; it never selects anything.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict, cast

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax import lax

from meta_semi_jax import __version__, algorithms, checkpoint, config_check, data as data_lib
from meta_semi_jax.assumption import device_assumption_ratio
from meta_semi_jax.augment import normalize
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.host_stream import HostStream
from meta_semi_jax.data.sampler import SamplerSpec
from meta_semi_jax.logs import RunLog
from meta_semi_jax.models import create_model
from meta_semi_jax.optim import make_optimizer
from meta_semi_jax.parallel import AXIS, DataParallel, bytes_on_this_process, make_mesh
from meta_semi_jax.state import TrainState, create_train_state, model_variables
from meta_semi_jax.step import device_train_step, step_keys


def itstime(step: int, every: int, num_steps: int) -> bool:
    """Whether an every-``every``-steps action (log, evaluation, checkpoint) is due after
    ``step``: at each multiple of ``every``, and after the last of ``num_steps``."""
    return step % every == 0 or step == num_steps


def sampler_from_config(config: ml_collections.ConfigDict, unlabeled_views: int) -> SamplerSpec:
    """How the step draws its batch: the config's batch sizes, augmentation and pool
    placement, with ``unlabeled_views`` augmentations of each unlabeled image."""
    return SamplerSpec(labeled_batch_size=config.labeled_batch_size,
                       unlabeled_batch_size=config.unlabeled_batch_size,
                       translate=config.translate, flip=config.flip, pad_mode=config.pad_mode,
                       unlabeled_placement=config.unlabeled_placement,
                       unlabeled_views=unlabeled_views)


def device_eval_counts(state: TrainState, images: jax.Array, labels: jax.Array,
                       mask: jax.Array, *, mean: np.ndarray, std: np.ndarray,
                       chunk_size: int) -> dict[str, jax.Array]:
    """Correct predictions of the EMA model (eval-mode BatchNorm) on this device's
    share of a padded split, summed over devices; ``mask`` marks real examples."""
    variables = model_variables(state.ema_params, state.ema_batch_stats)

    def chunk_correct(chunk):
        x, y, m = chunk
        logits = state.apply_fn(variables, normalize(x, mean, std), train=False)
        return jnp.sum((jnp.argmax(logits, -1) == y) * m)

    def reshape(a: jax.Array) -> jax.Array:
        return a.reshape((-1, chunk_size) + a.shape[1:])

    correct = jnp.sum(lax.map(chunk_correct, (reshape(images), reshape(labels), reshape(mask))))
    return {"correct": lax.psum(correct, AXIS), "count": lax.psum(jnp.sum(mask), AXIS)}


def pad_split(images: np.ndarray, labels: np.ndarray, multiple: int) -> tuple[np.ndarray, ...]:
    """Pads a split to a multiple of ``multiple`` examples; the mask is 0 on padding."""
    pad = -len(labels) % multiple
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, mask


class Evaluator:
    """Accuracy (%) of the EMA model on a fixed split, one compiled call per evaluation."""

    def __init__(self, dp: DataParallel, images: np.ndarray, labels: np.ndarray,
                 mean: np.ndarray, std: np.ndarray, eval_batch_size: int):
        chunk = eval_batch_size // dp.num_devices
        self._arrays = dp.shard(pad_split(images, labels, eval_batch_size))
        self._fn = dp.run(functools.partial(device_eval_counts, mean=mean, std=std,
                                            chunk_size=chunk),
                          ("replicated", "sharded", "sharded", "sharded"))
        self._dp = dp

    def accuracy(self, state: TrainState) -> float:
        counts = self._dp.unreplicate(self._fn(state, *self._arrays))
        return 100.0 * float(counts["correct"]) / float(counts["count"])


def load_checked_data(config: ml_collections.ConfigDict, workdir: str) -> data_lib.SSLData:
    """Loads and splits the dataset, checking the config against it on the way, and the
    split against the one a previous run in ``workdir`` used (``split.json``)."""
    num_classes, _ = data_lib.dataset_facts(config)
    fold_size = data_lib.fold_size(config)
    config_check.check_label_counts(config, num_classes, fold_size)
    raw = data_lib.load_raw(config)
    if fold_size is None:
        config_check.check_pool_size(
            config, data_lib.max_labels_per_class(raw.train_labels, num_classes,
                                                  config.num_validation), num_classes)
    split = data_lib.split_indices(config, raw)
    check_same_split(workdir, split)
    ssl = data_lib.split_dataset(raw, split)
    config_check.check_batch_sizes(config, len(ssl.labeled_labels), len(ssl.unlabeled_labels))
    return ssl


def check_same_split(workdir: str, split: data_lib.SplitIndices) -> None:
    """A workdir keeps one split: a different one (another dataset, label count, split
    seed or fold) is refused rather than silently mixed with the earlier run's files."""
    path = os.path.join(workdir, "split.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)["hash"]
        if previous != split.digest():
            raise config_check.ConfigError(
                f"{workdir} holds a run on split {previous} but this config gives split "
                f"{split.digest()} (dataset, num_labels, num_validation, split_seed or fold "
                f"differ): use another --workdir")


def write_json(workdir: str, name: str, record: dict[str, Any],
               indent: int | None = 2) -> None:
    """Writes ``workdir/name``; in a multi-host run only process 0 writes files."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=indent)


class NonFiniteError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


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


def _host_metrics(metrics: dict[str, jax.Array], dp: DataParallel) -> dict[str, float | None]:
    """Scalars on the host; a diagnostic with nothing to measure (NaN) becomes None."""
    values = {k: float(v) for k, v in dp.unreplicate(metrics).items()}
    return {k: v if np.isfinite(v) or k in GUARDED_METRICS else None
            for k, v in values.items()}


class Training(NamedTuple):
    """Everything a run's loop needs, already on the devices."""
    dp: DataParallel
    step_fn: jax.stages.Wrapped  # (state, data, run_key) -> (state, metrics)
    state: TrainState
    data: DeviceData
    run_key: jax.Array
    val_eval: Evaluator
    test_eval: Evaluator
    ratio_fn: Callable[..., dict[str, jax.Array]] | None  # Assumption 1, when logged
    stream: HostStream | None  # the unlabeled pool in host memory ('host' placement)


def place_data(dp: DataParallel, ssl: data_lib.SSLData, unlabeled_kind: str,
               stream: HostStream | None = None) -> DeviceData:
    """Training pools on the devices: the labeled pool replicated, the unlabeled pool
    (with its hidden labels, for diagnostics only) replicated, sharded (then cut to a
    multiple of the device count, dropping at most D - 1 images at its end), or, with
    ``stream``, only the first step's unlabeled batch."""
    pool = (ssl.unlabeled_images, ssl.unlabeled_labels)
    unlabeled: tuple[jax.Array, jax.Array]
    if stream is not None:
        unlabeled = stream.batch(0)
    elif unlabeled_kind == "sharded":
        keep = len(ssl.unlabeled_labels) - len(ssl.unlabeled_labels) % dp.num_devices
        unlabeled = dp.shard(jax.tree.map(lambda x: x[:keep], pool))
    else:
        unlabeled = dp.replicate(pool)
    return DeviceData(labeled_images=dp.replicate(ssl.labeled_images),
                      labeled_labels=dp.replicate(ssl.labeled_labels),
                      unlabeled_images=unlabeled[0], unlabeled_labels=unlabeled[1],
                      mean=dp.replicate(ssl.mean), std=dp.replicate(ssl.std))


def build_training(config: ml_collections.ConfigDict, ssl: data_lib.SSLData) -> Training:
    """Initialises the model and puts state, data and keys on the devices. The hidden
    labels of the unlabeled set only reach the pseudo-label diagnostics."""
    dp = DataParallel(config.parallel, make_mesh())
    axis_name = AXIS if config.sync_batch_norm else None
    model = create_model(config.model, ssl.num_classes, axis_name=axis_name,
                         dtype=jnp.dtype(config.compute_dtype))
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_train_state(model, make_optimizer(config), init_key,
                               jnp.zeros((1,) + ssl.labeled_images.shape[1:], jnp.float32))
    if config.compute_dtype != "float32":
        state = state.replace(float32_apply_fn=create_model(
            config.model, ssl.num_classes, axis_name=axis_name).apply)
    algorithm = algorithms.from_config(config, ssl.num_classes)
    unlabeled_kind = "replicated" if config.unlabeled_placement == "replicated" else "sharded"
    # DeviceData's pytree with a placement kind (str) at each leaf: dp.run's in_kinds.
    data_kinds = cast(Any, DeviceData)(
        labeled_images="replicated", labeled_labels="replicated",
        unlabeled_images=unlabeled_kind, unlabeled_labels=unlabeled_kind,
        mean="replicated", std="replicated")
    sampler = sampler_from_config(config, algorithm.unlabeled_views)
    step_fn = dp.run(functools.partial(device_train_step, sampler=sampler, algorithm=algorithm,
                                       ema_decay=config.ema_decay),
                     ("replicated", data_kinds, "replicated"), donate_argnums=(0,))
    ratio_fn = None
    if config.log_assumption_ratio:
        terms = algorithm.assumption_terms
        assert terms is not None, "config_check admits the ratio only for meta_semi"
        ratio_fn = dp.run(functools.partial(
            device_assumption_ratio, sampler=dataclasses.replace(sampler, unlabeled_views=1),
            terms=terms, num_samples=config.assumption_ratio_samples),
            ("replicated", data_kinds, "replicated"))
    stream = None
    if config.unlabeled_placement == "host":
        stream = HostStream(dp, ssl.unlabeled_images, ssl.unlabeled_labels,
                            step_keys(run_key, 0)[0], config.unlabeled_batch_size)
    return Training(
        ratio_fn=ratio_fn, stream=stream,
        dp=dp, step_fn=step_fn, state=dp.replicate(state),
        data=place_data(dp, ssl, config.unlabeled_placement, stream),
        run_key=dp.replicate(run_key),
        val_eval=Evaluator(dp, ssl.val_images, ssl.val_labels, ssl.mean, ssl.std,
                           config.eval_batch_size),
        test_eval=Evaluator(dp, ssl.test_images, ssl.test_labels, ssl.mean, ssl.std,
                            config.eval_batch_size))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Checks ``config``, loads and splits its data, and trains and evaluates it, writing
    ``split.json``, ``config.json``, ``metrics.jsonl``, checkpoints and ``results.json``
    to ``workdir``. A workdir with checkpoints resumes from the latest complete one.

    Returns the results dict.
    """
    start = time.time()
    config_check.check_config(config, jax.device_count())
    config_check.check_processes(config, jax.process_count())
    ssl = load_checked_data(config, workdir)
    make_workdir(workdir)
    manager = checkpoint.open_manager(workdir, config.max_checkpoints)
    try:
        check_resumable(config, manager)
        write_json(workdir, "split.json", ssl.split.record(), indent=None)
        write_json(workdir, "config.json", json.loads(config.to_json_best_effort()))
        write_json(workdir, "environment.json", environment())
        return run_training(config, workdir, ssl, manager, start)
    finally:
        manager.wait_until_finished()
        manager.close()


def environment() -> dict[str, Any]:
    """Versions and devices of this run, recorded next to its config."""
    import flax
    import optax

    return {"meta_semi_jax": __version__, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "processes": jax.process_count(),
            "devices": [str(d.device_kind) for d in jax.devices()]}


def make_workdir(workdir: str) -> None:
    """Creates ``workdir`` (if needed) and checks that files can be written in it."""
    try:
        os.makedirs(workdir, exist_ok=True)
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise config_check.ConfigError(
            f"--workdir={workdir} cannot be used: {e.strerror or e}") from None


@contextlib.contextmanager
def stderr_closed_if_it_fails():
    """Points file descriptor 2 at /dev/null for the block and leaves it there if the
    block raises: after a failed checkpoint read, tensorstore threads call into orbax's
    closed event loop and print tracebacks at random moments, in front of the one error
    line (which ``main`` writes to the terminal's stderr, kept aside)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    except BaseException:
        raise
    else:
        sys.stderr.flush()
        os.dup2(saved, 2)
    finally:
        os.close(devnull)
        os.close(saved)


def check_resumable(config: ml_collections.ConfigDict, manager) -> None:
    """Refuses to resume a checkpoint written with other values of the fields that define
    the experiment, unless ``allow_config_change`` (then they are logged), and a
    checkpoint that cannot be read (nothing in the workdir is changed)."""
    try:
        with stderr_closed_if_it_fails():
            loop = checkpoint.latest_loop_record(manager)
    except Exception as e:  # orbax raises many types for damaged files
        raise config_check.ConfigError(
            f"the latest checkpoint (step {manager.latest_step()}) in {manager.directory} "
            f"cannot be read ({type(e).__name__}); move it away to resume from an earlier "
            f"one, or use another --workdir") from None
    if loop is None:
        return
    changed = checkpoint.changed_fields(loop["config"], config)
    if changed and not config.allow_config_change:
        raise config_check.ConfigError(
            f"the checkpoint at step {loop['step']} in {manager.directory} was written with "
            f"other values of {', '.join(changed)}; use another --workdir, or pass "
            f"--config.allow_config_change=True to continue with the new values")
    for change in changed:
        logging.warning("resuming with a changed config field: %s", change)


class StopSignal:
    """Turns SIGTERM (a preemption notice) into a flag the loop checks after each step."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.received = True


GUARDED_METRICS = ("loss", "labeled_loss")


def _all_finite(scalars: dict[str, float | None]) -> bool:
    """Whether the training losses are finite (diagnostics may be undefined)."""
    # _host_metrics never turns a guarded metric into None.
    return all(np.isfinite(cast(float, scalars[k])) for k in GUARDED_METRICS if k in scalars)


class BestEvaluation(TypedDict):
    """The evaluation with the best validation accuracy so far."""
    val_accuracy: float
    step: int
    test_accuracy: float | None  # None before the first evaluation


class LoopRecord(TypedDict):
    """The loop's bookkeeping, saved with each checkpoint and restored on resume."""
    step: int
    best: BestEvaluation
    val_accuracy: float | None
    wall_seconds: float
    config: dict[str, Any]


def run_training(config: ml_collections.ConfigDict, workdir: str, ssl: data_lib.SSLData,
                 manager, start: float) -> dict[str, Any]:
    """The training loop with its evaluations and checkpoints; writes metrics.jsonl and,
    at the end, results.json."""
    (dp, step_fn, state, device_data, run_key, val_eval, test_eval,
     ratio_fn, stream) = build_training(config, ssl)
    loop: LoopRecord = {
        "step": 0, "best": {"val_accuracy": -1.0, "step": 0, "test_accuracy": None},
        "val_accuracy": None, "wall_seconds": 0.0, "config": checkpoint.fixed_fields(config)}
    try:
        restored = checkpoint.restore_latest(manager, dp.unreplicate(state))
    except Exception as e:  # orbax raises many types for damaged files
        raise config_check.ConfigError(
            f"the latest checkpoint (step {manager.latest_step()}) in {manager.directory} "
            f"cannot be restored ({type(e).__name__}); move it away to resume from an "
            f"earlier one, or use another --workdir") from None
    if restored is not None:
        host_state, saved_loop = restored
        state = dp.replicate(host_state)
        loop.update({"step": saved_loop["step"], "best": saved_loop["best"],
                     "val_accuracy": saved_loop["val_accuracy"],
                     "wall_seconds": saved_loop["wall_seconds"]})
        logging.info("resumed from the checkpoint at step %d", loop["step"])
    run_log = RunLog(workdir, last_step=loop["step"])
    logging.info("%s on %s with %d labels (split %s), %d unlabeled, %d devices (%s)",
                 config.algorithm, config.dataset, config.num_labels, ssl.split.digest(),
                 len(ssl.unlabeled_labels), dp.num_devices, config.parallel)
    logging.info("unlabeled images (%s): %d bytes on this process's devices",
                 config.unlabeled_placement, bytes_on_this_process(device_data.unlabeled_images))
    stop = StopSignal()
    progress = Progress(config.num_train_steps)
    earlier_seconds = loop["wall_seconds"]  # spent by the runs this one resumes

    def save_checkpoint(step: int) -> None:
        loop.update({"step": step, "wall_seconds": earlier_seconds + time.time() - start})
        checkpoint.save(manager, step, dp.unreplicate(state), dict(loop))

    first_step = loop["step"] + 1
    for step in range(first_step, config.num_train_steps + 1):
        if stream is not None:  # the batch of the step that starts at state.step
            device_data = stream.with_batch(device_data, step - 1)
        state, metrics = step_fn(state, device_data, run_key)
        if step == first_step:
            jax.block_until_ready(metrics)
            logging.info("first step (with compilation) took %.1f s", time.time() - start)
            progress.restart(step)
        last = step == config.num_train_steps
        log_due = itstime(step, config.log_every_steps, config.num_train_steps)
        checkpoint_due = (itstime(step, config.checkpoint_every_steps, config.num_train_steps)
                          or stop.received)
        if log_due or checkpoint_due:
            scalars = _host_metrics(metrics, dp)
            if not _all_finite(scalars):
                good = manager.latest_step()
                raise NonFiniteError(
                    f"non-finite training metrics by step {step} ({scalars}); " + (
                        f"the last good checkpoint is step {good} in {manager.directory}"
                        if good is not None else "no checkpoint was written yet"))
            if log_due:
                logging.info("%s", progress.line(step, scalars))
                run_log.scalars(step, scalars, "train")
        if itstime(step, config.eval_every_steps, config.num_train_steps):
            loop["val_accuracy"] = val_accuracy = val_eval.accuracy(state)
            # The test error is logged for the learning curves only; nothing selects on it.
            record = {"step": step, "val_accuracy": loop["val_accuracy"],
                      "test_accuracy": test_eval.accuracy(state),
                      "wall_seconds": earlier_seconds + time.time() - start,
                      **_host_metrics(metrics, dp)}
            if val_accuracy > loop["best"]["val_accuracy"]:
                loop["best"] = {"val_accuracy": val_accuracy, "step": step,
                                "test_accuracy": record["test_accuracy"]}
            if ratio_fn is not None:
                record.update(_host_metrics(ratio_fn(state, device_data, run_key), dp))
            run_log.evaluation(record)
            logging.info("step %d  val accuracy %.2f%%  (best %.2f%% at step %d)", step,
                         loop["val_accuracy"], loop["best"]["val_accuracy"],
                         loop["best"]["step"])
        if checkpoint_due:
            save_checkpoint(step)
        if stop.received and not last:
            manager.wait_until_finished()
            raise Preempted(f"SIGTERM: saved a checkpoint at step {step} in "
                            f"{manager.directory}; run the same command to resume")

    test_accuracy = test_eval.accuracy(state)
    best = loop["best"]
    results = {
        "algorithm": config.algorithm, "dataset": config.dataset, "model": config.model,
        "num_labels": config.num_labels, "seed": config.seed, "split_seed": config.split_seed,
        "split_hash": ssl.split.digest(), "step": config.num_train_steps,
        "test_accuracy": test_accuracy, "test_error": 100.0 - test_accuracy,
        "val_accuracy": loop["val_accuracy"],
        "best_val_accuracy": best["val_accuracy"], "best_val_step": best["step"],
        # The last step evaluates, so the best evaluation has a test accuracy.
        "best_val_test_error": 100.0 - cast(float, best["test_accuracy"]),
        "num_devices": dp.num_devices, "parallel": config.parallel,
        "wall_seconds": earlier_seconds + time.time() - start,
        "version": __version__,
    }
    run_log.close()
    write_json(workdir, "results.json", results)
    logging.info("final test error %.2f%% (best-validation model: %.2f%%)",
                 results["test_error"], results["best_val_test_error"])
    return results
