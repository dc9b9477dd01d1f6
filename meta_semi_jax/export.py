"""Command line: ``python -m meta_semi_jax.export --workdir=DIR --output=FILE.msgpack``.

Writes the evaluated model of the latest checkpoint in ``DIR`` (the EMA model:
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
import sys
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from flax import serialization

from meta_semi_jax import algorithms, checkpoint
from meta_semi_jax.model_card import ModelCard, ModelCardError, read_model_json

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (--workdir of training).")
_OUTPUT = flags.DEFINE_string("output", None, "The file to write, e.g. model.msgpack; its "
                              "model.json goes next to it with the suffix .json.")
flags.mark_flags_as_required(["workdir", "output"])

EXIT_USAGE = 2


class ExportError(ValueError):
    """A workdir or output that cannot be exported; the message is one line."""


def card_path(output: str) -> str:
    """Where the model card of ``output`` goes: its name with the suffix ``.json``."""
    return os.path.splitext(output)[0] + ".json"


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config the run wrote (``config.json``)."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read ({type(e).__name__})") from None


def check_evaluated_model_is_ema(config: ml_collections.ConfigDict, num_classes: int) -> None:
    """Refuses algorithms whose evaluated model is a weight average, not the EMA model."""
    try:
        algorithm = algorithms.from_config(config, num_classes)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise ExportError(f"the run's config.json cannot be used ({type(e).__name__}: "
                          f"{e})") from None
    if algorithm.weight_average is not None:
        raise ExportError(
            f"export of {config.algorithm} runs is not supported yet: their evaluated model "
            f"is a weight average whose BatchNorm statistics are recomputed from data")


def check_output(output: str) -> None:
    """The output and its model card must be two files in an existing directory."""
    if card_path(output) == output:
        raise ExportError(f"--output={output} must not end in .json (its model card is "
                          f"written there)")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ExportError(f"--output={output}: {directory} is not a writable directory")


def latest_ema_variables(workdir: str) -> tuple[int, dict[str, Any]]:
    """(step, ``{"params", "batch_stats"}`` of the EMA model) of the latest complete
    checkpoint in ``workdir``, read without changing anything there."""
    directory = checkpoint.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise ExportError(f"{workdir} has no checkpoints (no {directory})")
    manager = ocp.CheckpointManager(directory,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = manager.latest_step()
        if step is None:
            raise ExportError(f"{directory} holds no complete checkpoint")
        try:
            state = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore())).state
        except Exception as e:  # orbax raises many types for damaged files
            raise ExportError(f"the checkpoint at step {step} in {directory} cannot be read "
                              f"({type(e).__name__})") from None
    finally:
        manager.close()
    return step, {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}


def write_export(output: str, variables: dict[str, Any], card: ModelCard) -> None:
    """Writes ``output`` (flax serialisation of ``variables``) and its model card."""
    try:
        with open(output, "wb") as f:
            f.write(serialization.to_bytes(variables))
        with open(card_path(output), "w") as f:
            json.dump(card.to_json(), f, indent=2)
    except OSError as e:
        raise ExportError(f"--output={output} cannot be written: {e.strerror or e}") from None


def export(workdir: str, output: str) -> int:
    """Exports the EMA model of ``workdir``'s latest checkpoint to ``output`` and its
    model card to ``card_path(output)``; returns the checkpoint's step. Raises
    ``ExportError`` or ``ModelCardError`` before writing anything."""
    card = read_model_json(workdir)
    check_evaluated_model_is_ema(run_config(workdir), card.num_classes)
    check_output(output)
    step, variables = latest_ema_variables(workdir)
    write_export(output, variables, card)
    return step


def _exit_with(message: str) -> None:
    """One error line, then the end of the process at once (orbax threads left by a
    failed read would otherwise print at interpreter shutdown)."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(EXIT_USAGE)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
    # Both flags are required (mark_flags_as_required): absl refuses None before main.
    workdir, output = str(_WORKDIR.value), str(_OUTPUT.value)
    try:
        step = export(workdir, output)
    except (ExportError, ModelCardError) as e:
        _exit_with(str(e))
    print(f"exported the EMA model of step {step} to {output} and its model card to "
          f"{card_path(output)}")


if __name__ == "__main__":
    app.run(main)
