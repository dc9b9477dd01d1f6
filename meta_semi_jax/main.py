"""Command line: ``python -m meta_semi_jax.main --config=configs/digits.py:50 --workdir=DIR``.

``--config`` names a config file and its argument (the label count); any field can be
overridden with ``--config.<field>=<value>``. Config and flag mistakes end the program
before any compute with one line on stderr and exit status 2.
"""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
from typing import cast

from absl import app, flags, logging
from ml_collections import config_flags

from meta_semi_jax import cli, train
from meta_semi_jax.cli import exit_with
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data import DataError
from meta_semi_jax.loop import NonFiniteError, Preempted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and its argument, e.g. configs/digits.py:50.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, logs and checkpoints.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a run over several processes "
    "(hosts); with --num_processes and --process_id. Without them, --multihost lets "
    "jax.distributed find its peers itself (TPU pods, SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with "
                               "the cluster's own discovery (TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_DIVERGED = 3
cli.quiet_library_logs(orbax_level=std_logging.WARNING)


@contextlib.contextmanager
def stderr_closed_if_it_fails():
    """Points file descriptor 2 at /dev/null for the block and leaves it there if the
    block raises: after a failed checkpoint read, tensorstore threads call into orbax's
    closed event loop and print tracebacks at random moments, in front of the one error
    line (which ``cli.exit_with`` writes to the terminal's stderr, kept aside)."""
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


def _innermost_message(error: BaseException) -> str:
    """ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0]) if error.args else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with every flag or config mistake reduced to one line.

    The config file is loaded lazily by ml_collections; it is forced here so that a
    missing or broken file is reported like any other flag mistake.
    """
    try:
        remaining = flags.FLAGS(argv)
        _CONFIG.value.get("algorithm")
        return remaining
    except flags.Error as e:
        exit_with(cli.one_line(str(e)))
    except (KeyError, AttributeError) as e:
        exit_with(f"--config: unknown field {cli.one_line(_innermost_message(e))}")
    except (OSError, TypeError, ValueError) as e:
        exit_with(f"--config: {cli.one_line(str(e))}")
    return []


def initialize_processes() -> None:
    """Joins the processes of a multi-host run; must come before any other JAX call."""
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _MULTIHOST.value:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
    if _COORDINATOR.value and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
        exit_with("--coordinator_address needs --num_processes and --process_id")
    initialize_processes()
    try:
        # --workdir is required (mark_flags_as_required): absl refuses None before main.
        train.train_and_evaluate(_CONFIG.value, cast(str, _WORKDIR.value),
                                 quiet_checkpoint_reads=stderr_closed_if_it_fails)
    except (ConfigError, DataError) as e:
        exit_with(str(e))
    except Preempted as e:
        logging.warning("%s", e)
    except NonFiniteError as e:
        exit_with(str(e), EXIT_DIVERGED)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
