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

from meta_semi_jax import checkpoint, config_check, model_card, run_dir
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

    Returns the results dict.
    """
    start = time.time()
    config_check.check_config(config, jax.device_count())
    config_check.check_processes(config, jax.process_count())
    ssl = load_checked_data(config, workdir)
    run_dir.make_workdir(workdir)
    manager = checkpoint.open_manager(workdir, config.max_checkpoints)
    try:
        run_dir.check_resumable(config, manager, quiet_checkpoint_reads)
        run_dir.write_json(workdir, "split.json", ssl.split.record(), indent=None)
        run_dir.write_json(workdir, "config.json", json.loads(config.to_json_best_effort()))
        run_dir.write_json(workdir, "environment.json", run_dir.environment())
        model_card.write_model_json(workdir, model_card.card_for_run(config, ssl))
        return run_training(config, workdir, ssl, manager, start)
    finally:
        manager.wait_until_finished()
        manager.close()
