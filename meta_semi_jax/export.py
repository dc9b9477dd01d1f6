"""Command line: ``python -m meta_semi_jax.export --workdir=DIR --output=FILE.msgpack
[--checkpoint=best|latest|STEP]``.

Writes the evaluated model of a checkpoint in ``DIR`` (by default the best-validation
one, ``checkpoint.chosen_step``; the EMA model:
``TrainState.ema_params`` and ``ema_batch_stats``) as flax serialisation of
``{"params": ..., "batch_stats": ...}`` to ``FILE.msgpack``, and the run's
``model.json`` (``model_card``) next to it as ``FILE.json``. Load it with
``flax.serialization.from_bytes(variables, data)`` into the variables of
``models.create_model(card.model, card.num_classes)`` and call
``model.apply(variables, (pixels - mean) / std, train=False)``.

Runs whose evaluated model is a weight average (Mean Teacher + fast-SWA, whose
BatchNorm statistics are recomputed from data, ``build.evaluated_model``) are refused:
their export is not supported yet. A mistake (no workdir, no model.json, no checkpoint,
an unwritable output) ends the program with one line on stderr and exit status 2,
before anything is written.
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags
from flax import serialization

from meta_semi_jax import checkpoint, cli
from meta_semi_jax.model_card import ModelCard, ModelCardError, read_model_json
from meta_semi_jax.run_dir import RunDirError, read_config


class ExportError(ValueError):
    """A workdir or output that cannot be exported; the message is one line."""


def card_path(output: str) -> str:
    """Where the model card of ``output`` goes: its name with the suffix ``.json``."""
    return os.path.splitext(output)[0] + ".json"


def check_output(output: str) -> None:
    """The output and its model card must be two files in an existing directory."""
    if card_path(output) == output:
        raise ExportError(f"--output={output} must not end in .json (its model card is "
                          f"written there)")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ExportError(f"--output={output}: {directory} is not a writable directory")


def write_export(output: str, variables: dict[str, Any], card: ModelCard) -> None:
    """Writes ``output`` (flax serialisation of ``variables``) and its model card."""
    try:
        with open(output, "wb") as f:
            f.write(serialization.to_bytes(variables))
        with open(card_path(output), "w") as f:
            json.dump(card.to_json(), f, indent=2)
    except OSError as e:
        raise ExportError(f"--output={output} cannot be written: {e.strerror or e}") from None


def export(workdir: str, output: str, which: str = "best") -> int:
    """Exports the EMA model of ``workdir``'s checkpoint ``which`` to ``output`` and its
    model card to ``card_path(output)``; returns the checkpoint's step. Raises
    ``ExportError``, ``ModelCardError``, ``RunDirError``,
    ``checkpoint.EvaluatedModelError`` or ``checkpoint.CheckpointChoiceError`` before
    writing anything."""
    card = read_model_json(workdir)
    checkpoint.check_evaluated_model_is_ema(read_config(workdir), card.num_classes, "export")
    check_output(output)
    step, variables = checkpoint.ema_variables(workdir, which)
    write_export(output, variables, card)
    return step


def define_flags() -> None:
    flags.DEFINE_string("output", None, "The file to write, e.g. model.msgpack; its "
                        "model.json goes next to it with the suffix .json.")
    cli.define_reading_flags("output")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
    # Both flags are required (mark_flags_as_required): absl refuses None before main.
    workdir, output = str(flags.FLAGS.workdir), str(flags.FLAGS.output)
    try:
        step = export(workdir, output, flags.FLAGS.checkpoint)
    except (ExportError, ModelCardError, RunDirError, checkpoint.EvaluatedModelError,
            checkpoint.CheckpointChoiceError) as e:
        cli.exit_with(str(e))
    print(f"exported the EMA model of step {step} to {output} and its model card to "
          f"{card_path(output)}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
