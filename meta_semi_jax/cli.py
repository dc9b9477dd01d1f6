"""What the command-line programs (``main``, ``evaluate``, ``predict``, ``export``)
share: a mistake ends the program with one line on stderr and exit status 2."""
from __future__ import annotations

import logging
import os
import re
import sys

from absl import flags

EXIT_USAGE = 2
# The terminal's stderr, kept aside at import: the training program points file
# descriptor 2 at /dev/null while it reads a checkpoint that may be damaged
# (``main.stderr_closed_if_it_fails``), and its error line must still be seen.
_USER_STDERR = os.dup(2)


def quiet_library_logs(orbax_level: int) -> None:
    """Keeps the libraries' housekeeping out of the program's log: JAX reports at INFO
    every accelerator plugin it does not find (libtpu on every GPU or CPU machine); tfds
    warns through absl about its own metadata folders ('Variant folder ... has no
    dataset_info.json'; the programs report missing data themselves); orbax logs every
    step of every save at INFO, and warns at every read-only open (``orbax_level``:
    the lowest level of orbax's records that are kept)."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    quiet = {"tensorflow_datasets": logging.ERROR, "orbax": orbax_level}

    def not_housekeeping(record: logging.LogRecord) -> bool:
        return not any(f"/{library}/" in record.pathname and record.levelno < level
                       for library, level in quiet.items())
    logging.getLogger("absl").addFilter(not_housekeeping)


def exit_with(message: str, status: int = EXIT_USAGE) -> None:
    """Prints one error line and ends the process at once: background threads of
    tensorstore/orbax that a failed read left behind would otherwise print tracebacks
    at interpreter shutdown. Nothing is left to flush or close at this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(_USER_STDERR, f"error: {message}\n".encode())
    os._exit(status)


def one_line(message: str) -> str:
    """The first line of a (possibly multi-line, traceback-carrying) error message, joined
    with its last line, which holds the underlying exception's own message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid value"
    if len(lines) == 1:
        return lines[0]
    cause = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])
    return f"{lines[0].rstrip(':')}: {cause}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a flag mistake (a missing required flag too) as one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        exit_with(one_line(str(e)))
    return []


def define_reading_flags(*required: str) -> None:
    """The flags of the programs that read a finished run (evaluate, predict, export):
    ``--workdir`` and ``--checkpoint``, plus the program's own ``required`` ones (defined
    before this call). Called when the program starts, not at import, so that the
    programs' modules can be imported together."""
    from meta_semi_jax.checkpoint import CHECKPOINT_CHOICES

    flags.DEFINE_string("workdir", None, "The run's directory (--workdir of training).")
    flags.DEFINE_string("checkpoint", "best", f"Which checkpoint: {CHECKPOINT_CHOICES}.")
    flags.mark_flags_as_required(["workdir", *required])
    quiet_library_logs(orbax_level=logging.ERROR)
