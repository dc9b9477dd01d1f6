"""Command line: ``python -m meta_semi_jax.evaluate --workdir=DIR
[--checkpoint=best|latest|STEP] [--split=test|validation]``.

Evaluates a kept checkpoint of a finished (or running) run again, with the training
program's own data split (``config.json``, checked against ``split.json``), model and
evaluation code (``evaluation.Evaluator``, the one the loop uses), on however many
devices this machine has. Writes ``DIR/eval_<checkpoint>_<split>.json``: accuracy,
error, per-class accuracy, the confusion matrix ``[true, predicted]``, the mean
cross-entropy and, for more than 10 classes, the top-5 accuracy; prints a short table.
For the same checkpoint it reproduces ``results.json``: ``--checkpoint=best`` gives its
``best_val_test_error`` (``--split=validation``: its ``best_val_accuracy``), and
``latest`` after the last step its ``test_error``.

A mistake (no workdir, no checkpoint of that name, a damaged checkpoint, missing
data) ends the program with one line on stderr and exit status 2, before any compute.
"""
from __future__ import annotations

from typing import Any

from absl import app, flags

from meta_semi_jax import checkpoint, cli
from meta_semi_jax.build import build_training, load_checked_data, place_data
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data import DataError
from meta_semi_jax.model_card import ModelCardError, read_model_json
from meta_semi_jax.run_dir import RunDirError, read_config, write_json

SPLITS = ("test", "validation")



def report_name(which: str, split: str) -> str:
    return f"eval_{which}_{split}.json"


def evaluate(workdir: str, which: str = "best", split: str = "test") -> dict[str, Any]:
    """Evaluates checkpoint ``which`` of the run in ``workdir`` on ``split`` and writes
    ``report_name(which, split)`` there; returns the report. Raises
    ``checkpoint.CheckpointChoiceError``, ``RunDirError``, ``ModelCardError``,
    ``ConfigError`` or ``DataError`` before any compute."""
    if split not in SPLITS:
        raise ConfigError(f"--split={split}: it must be one of {', '.join(SPLITS)}")
    config = read_config(workdir)
    card = read_model_json(workdir)
    manager = checkpoint.open_read_only(workdir)
    try:
        step = checkpoint.chosen_step(manager, which)
        ssl = load_checked_data(config, workdir)
        training = build_training(config, ssl)
        dp = training.dp
        try:
            host_state, _ = checkpoint.restore_step(manager, step,
                                                    dp.unreplicate(training.state))
        except Exception as e:  # orbax raises many types for damaged files
            raise checkpoint.unreadable(manager, step, e) from None
    finally:
        manager.close()
    evaluator = training.test_eval if split == "test" else training.val_eval
    summary = evaluator.summary(training.evaluated(
        dp.replicate(host_state), lambda: place_data(dp, ssl, config, training.stream)))
    # The fields of evaluation.EvalSummary.to_json, with what was evaluated.
    report = {"checkpoint": which, "step": step, "split": split,
              "num_devices": dp.num_devices, "class_names": card.class_names,
              **summary.to_json()}
    write_json(workdir, report_name(which, split), report)
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a few lines of text: the totals, then one line per class."""
    names = report["class_names"] or [str(c) for c in range(len(report["per_class_accuracy"]))]
    lines = [f"checkpoint {report['checkpoint']} (step {report['step']}), "
             f"{report['split']} split, {report['count']} images",
             f"accuracy {report['accuracy']:.2f}%  error {report['error']:.2f}%  "
             f"mean loss {report['mean_loss']:.4f}"
             + ("" if report["top5_accuracy"] is None
                else f"  top-5 accuracy {report['top5_accuracy']:.2f}%")]
    width = max(len(name) for name in names)
    for name, accuracy in zip(names, report["per_class_accuracy"], strict=True):
        shown = "-" if accuracy is None else f"{accuracy:6.2f}%"
        lines.append(f"  {name:<{width}}  {shown}")
    return "\n".join(lines)


def define_flags() -> None:
    flags.DEFINE_enum("split", "test", SPLITS, "The split to evaluate on.")
    cli.define_reading_flags()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
    workdir = str(flags.FLAGS.workdir)  # required: absl refuses None before main
    which, split = flags.FLAGS.checkpoint, flags.FLAGS.split
    try:
        report = evaluate(workdir, which, split)
    except (checkpoint.CheckpointChoiceError, RunDirError, ModelCardError, ConfigError,
            DataError) as e:
        cli.exit_with(str(e))
    print(table(report))
    print(f"wrote {report_name(which, split)} in {workdir}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
