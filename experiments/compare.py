"""Runs one config for several algorithms over several seeds and tabulates test errors.

    python -m experiments.compare --config=configs/digits.py:50 \
        --algorithms=meta_semi,supervised --seeds=5 --root=/tmp/digits_table

Run ``i`` uses ``seed = split_seed = i`` (so every algorithm sees the same splits) and
writes to ``ROOT/<algorithm>/seed_<i>``; runs whose ``results.json`` exists are skipped,
so the command can be restarted. The table (mean +- sample std over seeds, in percent)
is printed and written to ``ROOT/table.md``. Config overrides work as for ``main``:
``--config.num_train_steps=1000``.
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from meta_semi_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and label count.",
                                          lock_config=False)
_ALGORITHMS = flags.DEFINE_list("algorithms", ["meta_semi", "supervised"], "Algorithms.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Number of seeds (and splits) per algorithm.")
_ROOT = flags.DEFINE_string("root", None, "Directory of all runs and the table.")
flags.mark_flags_as_required(["config", "root"])

COLUMNS = ("test_error", "best_val_test_error")


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def markdown_table(results: dict[str, list[dict]]) -> str:
    """One row per algorithm: final-model and best-validation test errors (%)."""
    lines = ["| algorithm | test error, final model (%) | test error, best-val. model (%) "
             "| seeds | minutes per run |", "|---|---|---|---|---|"]
    for algorithm, runs in results.items():
        cells = [mean_std([r[c] for r in runs]) for c in COLUMNS]
        minutes = statistics.mean(r["wall_seconds"] for r in runs) / 60
        lines.append(f"| {algorithm} | {cells[0]} | {cells[1]} | {len(runs)} | {minutes:.1f} |")
    return "\n".join(lines)


def run_or_load(config, workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        train.train_and_evaluate(config, workdir)
    with open(path) as f:
        return json.load(f)


def main(argv: Sequence[str]) -> None:
    del argv
    results: dict[str, list[dict]] = {}
    for algorithm in _ALGORITHMS.value:
        for seed in range(_SEEDS.value):
            config = _CONFIG.value.copy_and_resolve_references()
            config.algorithm, config.seed, config.split_seed = algorithm, seed, seed
            workdir = os.path.join(_ROOT.value, algorithm, f"seed_{seed}")
            results.setdefault(algorithm, []).append(run_or_load(config, workdir))
    table = markdown_table(results)
    with open(os.path.join(_ROOT.value, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
