"""The training program: one run of one config, for every algorithm.

``train_and_evaluate(config, workdir)`` checks the config (``config_check``), loads and
splits the data (``build``), prepares the run directory and its checks (``run_dir``),
and runs the loop (``loop``), which sets up the devices and compiled programs
(``build.build_training``) and evaluates (``evaluation``).
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import jax
import ml_collections

from meta_semi_jax import checkpoint, config_check, data as data_lib, model_card, run_dir, run_set
from meta_semi_jax.build import load_checked_data
from meta_semi_jax.loop import run_training


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       quiet_checkpoint_reads: Callable[[], AbstractContextManager[Any]]
                       = contextlib.nullcontext) -> dict[str, Any]:
    """Checks ``config``, loads and splits its data, and trains and evaluates it, writing
    ``split.json``, ``config.json``, ``environment.json``, ``model.json``
    (``model_card``), ``metrics.jsonl``, checkpoints
    and ``results.json`` to ``workdir``. A workdir with checkpoints resumes from the
    latest complete one; its first read runs inside ``quiet_checkpoint_reads()``.
    With ``num_parallel_runs=K > 1`` the K runs of ``run_set`` are trained together,
    each writing those files to ``workdir/run_<i>``; ``workdir`` then holds the set's
    config.json, environment.json and a results.json that summarises the runs.

    Returns the results dict (of the run, or the set's summary).
    """
    start = time.time()
    config_check.check_config(config, jax.device_count())
    config_check.check_processes(config, jax.process_count())
    run_dir.check_same_run_count(workdir, config.num_parallel_runs)
    num_runs = config.num_parallel_runs
    configs = ([config] if num_runs == 1
               else [run_set.run_config(config, i) for i in range(num_runs)])
    workdirs = [workdir] if num_runs == 1 else [run_set.run_dir(workdir, i)
                                                 for i in range(num_runs)]
    ssls = [load_checked_data(c, d) for c, d in zip(configs, workdirs, strict=True)]
    for directory in dict.fromkeys([workdir, *workdirs]):
        run_dir.make_workdir(directory)
    managers = [checkpoint.open_manager(d, c.max_checkpoints)
                for c, d in zip(configs, workdirs, strict=True)]
    try:
        for c, d, ssl, manager in zip(configs, workdirs, ssls, managers, strict=True):
            run_dir.check_resumable(c, manager, quiet_checkpoint_reads)
            write_run_records(c, d, ssl)
        if num_runs > 1:
            run_dir.write_json(workdir, "config.json", json.loads(config.to_json_best_effort()))
            run_dir.write_json(workdir, "environment.json", run_dir.environment())
        results = run_training(configs, workdirs, ssls, managers, start)
        if num_runs == 1:
            return results[0]
        summary = run_set.summary(results)
        run_dir.write_json(workdir, "results.json", summary)
        return summary
    finally:
        for manager in managers:
            manager.wait_until_finished()
            manager.close()


def write_run_records(config: ml_collections.ConfigDict, workdir: str,
                      ssl: data_lib.SSLData) -> None:
    """The records a run writes when it starts: its split, config, environment and
    model card."""
    run_dir.write_json(workdir, "split.json", ssl.split.record(), indent=None)
    run_dir.write_json(workdir, "config.json", json.loads(config.to_json_best_effort()))
    run_dir.write_json(workdir, "environment.json", run_dir.environment())
    model_card.write_model_json(workdir, model_card.card_for_run(config, ssl))
