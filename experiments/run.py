"""Runs the cells of one of the paper's tables over split seeds.

    python -m experiments.run --table=1 --seeds=5 --root=DIR [--cells=cifar10_1000]
    python -m experiments.run --table=5 --seeds=3 --root=DIR --dataset=digits --jobs=2
    python -m experiments.run --table=1 --seeds=5 --root=DIR --shard=0/4   # machine 1 of 4
    python -m experiments.run --table=1 --seeds=5 --root=DIR --parallel_runs   # on a GPU

Run ``i`` of a cell uses ``seed = split_seed = i`` (every method sees the same splits)
and is one ``python -m meta_semi_jax.main`` process writing to
``ROOT/<config>_<labels>/<method>/seed_<i>`` (its console output in ``console.log``
there); with ``--parallel_runs`` a cell's seeds are one process
(``meta_semi_jax.run_set``) writing ``ROOT/<config>_<labels>/<method>/run_<i>``.
Finished runs (with ``results.json``) are skipped and half-finished ones resume from
their last checkpoint, so the command can be rerun after any interruption.

The runs share JAX's persistent compilation cache (``ROOT/.jax_cache`` unless
``--compilation_cache`` or ``$JAX_COMPILATION_CACHE_DIR`` names another), and they
start seed by seed (every method's seed 0, then every method's seed 1, ...): the
seeds of a method run the same programs on other data, so its later seeds load them
instead of compiling (on the 2-core CPU, a digits Meta-Semi run's first step took
29.6 s with compilation and 8.7 s from the cache).
``--shard=i/n`` takes every n-th run of that list, so n machines sharing ROOT
(or merging their ROOTs) split a table. ``python -m experiments.report --root=DIR``
then tabulates.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

from absl import app, flags

from experiments import tables

FLAGS = flags.FLAGS


class Run(NamedTuple):
    workdir: str
    command: tuple[str, ...]


def runs_of(cells: Sequence[tables.Cell], root: str, seeds: int,
            overrides: Sequence[str], parallel: bool = False) -> list[Run]:
    """One run per distinct (config, labels, method, seed), sorted by seed and then by
    workdir; with ``parallel``, one process per (config, labels, method) that trains its
    seeds together (``--config.num_parallel_runs``; run ``i`` in ``<method>/run_<i>``, with
    seed = split_seed = i as the separate runs have)."""
    found: dict[tuple[int, str], Run] = {}
    for cell in cells:
        for seed in [0] if parallel else range(seeds):
            if parallel:
                workdir, run_flags = (os.path.join(root, cell.run_name),
                                      [f"--config.num_parallel_runs={seeds}"])
            else:
                workdir, run_flags = cell.run_dir(root, seed), []
            found[seed, workdir] = Run(workdir, (
                sys.executable, "-m", "meta_semi_jax.main",
                f"--config=configs/{cell.config}.py:{cell.labels}", f"--workdir={workdir}",
                f"--config.seed={seed}", f"--config.split_seed={seed}", *run_flags,
                *cell.run_method.config_flags(), *(f"--config.{o}" for o in overrides)))
    return [found[key] for key in sorted(found)]


def select(runs: Sequence[Run], root: str, patterns: Sequence[str], shard: str) -> list[Run]:
    """Runs matching ``--cells`` (all when empty), then the ``i/n`` shard of them."""
    index, count = (int(part) for part in shard.split("/"))
    if not 0 <= index < count:
        raise app.UsageError(f"--shard={shard}: need 0 <= i < n")
    # The run's directory with a final '/', so that '/<method>/' matches a set's too.
    kept = [r for r in runs if not patterns
            or any(p in os.path.relpath(r.workdir, root) + "/" for p in patterns)]
    return kept[index::count]


def is_finished(run: Run) -> bool:
    return os.path.exists(os.path.join(run.workdir, "results.json"))


def compilation_cache_dir(root: str, flag: str | None) -> str:
    """The runs' compilation cache: ``--compilation_cache``, else
    ``$JAX_COMPILATION_CACHE_DIR``, else ``ROOT/.jax_cache``; '' for none."""
    if flag is not None:
        return flag
    return os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join(root, ".jax_cache"))


def execute(run: Run, cache_dir: str) -> int:
    """Runs (or resumes) one training process; its output goes to ``console.log``."""
    os.makedirs(run.workdir, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    with open(os.path.join(run.workdir, "console.log"), "a") as log:
        return subprocess.run(run.command, cwd=repo, env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def last_line(path: str) -> str:
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        cells = tables.cells(FLAGS.dataset, FLAGS.table)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    overrides = [f"{k}={v}" for k, v in tables.EDITION_OVERRIDES[FLAGS.dataset]]
    overrides += FLAGS.override
    root = os.path.abspath(FLAGS.root)
    runs = select(runs_of(cells, root, FLAGS.seeds, overrides, FLAGS.parallel_runs), root,
                  FLAGS.cells, FLAGS.shard)
    todo = [r for r in runs if not is_finished(r)]
    print(f"table {FLAGS.table} ({FLAGS.dataset}): {len(runs)} runs, "
          f"{len(runs) - len(todo)} finished, {len(todo)} to run", flush=True)
    if FLAGS.dry_run:
        for run in todo:
            print(" ".join(run.command))
        return
    failed = []
    execute_cached = functools.partial(
        execute, cache_dir=compilation_cache_dir(root, FLAGS.compilation_cache))
    with concurrent.futures.ThreadPoolExecutor(max(1, FLAGS.jobs)) as pool:
        for run, code in zip(todo, pool.map(execute_cached, todo), strict=True):
            status = "done" if code == 0 else f"FAILED (exit {code})"
            print(f"{status}: {os.path.relpath(run.workdir, root)}", flush=True)
            if code:
                failed.append((run, code))
    for run, code in failed:
        print(f"failed run {run.workdir} (exit {code}): "
              f"{last_line(os.path.join(run.workdir, 'console.log'))}", file=sys.stderr)
    if failed:
        sys.exit(1)


def define_flags() -> None:
    flags.DEFINE_string("table", None, "The table to run; per --dataset: " + "; ".join(
        f"{edition}: {', '.join(names)}" for edition, names in tables.TABLES.items()) + ".")
    flags.DEFINE_integer("seeds", 5, "Runs per cell, with seed = split_seed = 0..n-1.")
    flags.DEFINE_string("root", None, "Directory of all runs.")
    flags.DEFINE_enum("dataset", "paper", list(tables.EDITIONS),
                      "paper: the paper's datasets; digits and fashion_mnist: the CPU editions.")
    flags.DEFINE_list("cells", [], "Keep runs whose '<config>_<labels>/<method>' "
                      "contains one of these strings.")
    flags.DEFINE_string("shard", "0/1", "i/n: run the i-th of n interleaved slices.")
    flags.DEFINE_integer("jobs", 1, "Runs at the same time on this machine.")
    flags.DEFINE_multi_string("override", [], "field=value for every run, e.g. "
                              "num_train_steps=100 (not part of the run's name).")
    flags.DEFINE_bool("parallel_runs", False, "Train each cell's seeds together in one "
                      "process (one vmapped step: --config.num_parallel_runs=seeds); for "
                      "GPUs: on a CPU it is slower than separate runs (PERF.md).")
    flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache "
                        "shared by the runs (default: $JAX_COMPILATION_CACHE_DIR, else "
                        "ROOT/.jax_cache); '' for none.")
    flags.DEFINE_bool("dry_run", False, "Print the commands only.")
    flags.mark_flags_as_required(["table", "root"])

if __name__ == "__main__":
    define_flags()
    app.run(main)
