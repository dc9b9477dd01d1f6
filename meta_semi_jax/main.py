"""Command line: ``python -m meta_semi_jax.main --config=configs/digits.py:50 --workdir=DIR``.

``--config`` names a config file and its argument (the label count); any field can be
overridden with ``--config.<field>=<value>``. Config and flag mistakes end the program
before any compute with one line on stderr and exit status 2.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from meta_semi_jax import train
from meta_semi_jax.config_check import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and its argument, e.g. configs/digits.py:50.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, logs and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_USAGE = 2


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with every flag or config-override mistake reduced to one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _exit_with(str(e).splitlines()[0])
    except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
        _exit_with(f"--config: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        _exit_with(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
