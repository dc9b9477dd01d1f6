"""A run's directory (``--workdir``): the records a run writes next to its checkpoints
and logs, and the checks that keep one workdir one experiment (the same split, the
same experiment-defining config on resume, a readable latest checkpoint)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import jax
import ml_collections
from absl import logging

from meta_semi_jax import __version__, checkpoint
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data import SplitIndices


class RunDirError(ValueError):
    """A finished run's directory that cannot be read; the message is one line."""


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to ``workdir/config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise RunDirError(f"--workdir={workdir} is not a directory")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} cannot be read ({type(e).__name__})") from None


def make_workdir(workdir: str) -> None:
    """Creates ``workdir`` (if needed) and checks that files can be written in it."""
    try:
        os.makedirs(workdir, exist_ok=True)
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} cannot be used: {e.strerror or e}") from None


def write_json(workdir: str, name: str, record: dict[str, Any],
               indent: int | None = 2) -> None:
    """Writes ``workdir/name``; in a multi-host run only process 0 writes files."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(record, f, indent=indent)


def environment() -> dict[str, Any]:
    """Versions and devices of this run, recorded next to its config."""
    import flax
    import optax

    return {"meta_semi_jax": __version__, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "processes": jax.process_count(),
            "devices": [str(d.device_kind) for d in jax.devices()]}


def check_same_run_count(workdir: str, num_runs: int) -> None:
    """A workdir holds one run or one set of parallel runs, of one size: another
    ``num_parallel_runs`` is refused (its runs would go elsewhere, or clash)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f).get("num_parallel_runs", 1)
    if previous != num_runs:
        raise ConfigError(
            f"{workdir} holds {'a run' if previous == 1 else f'a set of {previous} runs'} "
            f"but config.num_parallel_runs={num_runs}; use another --workdir")


def check_same_split(workdir: str, split: SplitIndices) -> None:
    """A workdir keeps one split: a different one (another dataset, label count, split
    seed or fold) is refused rather than silently mixed with the earlier run's files."""
    path = os.path.join(workdir, "split.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)["hash"]
        if previous != split.digest():
            raise ConfigError(
                f"{workdir} holds a run on split {previous} but this config gives split "
                f"{split.digest()} (dataset, num_labels, num_validation, split_seed or fold "
                f"differ): use another --workdir")


def damaged_checkpoint(manager, action: str, error: Exception) -> ConfigError:
    """The error for a latest checkpoint that cannot be ``action`` (read, restored)."""
    return ConfigError(
        f"the latest checkpoint (step {manager.latest_step()}) in {manager.directory} "
        f"cannot be {action} ({type(error).__name__}); move it away to resume from an "
        f"earlier one, or use another --workdir")


def check_resumable(config: ml_collections.ConfigDict, manager,
                    quiet_reads: Callable[[], AbstractContextManager[Any]]
                    = contextlib.nullcontext) -> None:
    """Refuses to resume a checkpoint written with other values of the fields that define
    the experiment, unless ``allow_config_change`` (then they are logged), and a
    checkpoint that cannot be read (nothing in the workdir is changed). The read runs
    inside ``quiet_reads()`` (the command line silences the stray output orbax's
    threads leave after a failed read)."""
    try:
        with quiet_reads():
            loop = checkpoint.latest_loop_record(manager)
    except Exception as e:  # orbax raises many types for damaged files
        raise damaged_checkpoint(manager, "read", e) from None
    if loop is None:
        return
    changed = checkpoint.changed_fields(loop["config"], config)
    if changed and not config.allow_config_change:
        raise ConfigError(
            f"the checkpoint at step {loop['step']} in {manager.directory} was written with "
            f"other values of {', '.join(changed)}; use another --workdir, or pass "
            f"--config.allow_config_change=True to continue with the new values")
    for change in changed:
        logging.warning("resuming with a changed config field: %s", change)
