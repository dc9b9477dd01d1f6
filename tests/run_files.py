"""Helpers shared by the tests: a config file loaded as ``--config=FILE:ARG`` loads it,
and what a run writes, read back without its wall-clock times for comparisons."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str) -> ml_collections.ConfigDict:
    """A fresh ``configs/<name>.py`` config for ``arg`` (each call a new, mutable one)."""
    spec = importlib.util.spec_from_file_location(f"{name}_config_under_test",
                                                  REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "wall_seconds"}


def results_without_time(workdir) -> dict:
    """``results.json`` of a run, without its wall-clock time."""
    return without_time(json.loads((pathlib.Path(workdir) / "results.json").read_text()))


def records_without_time(workdir) -> list[dict]:
    """``metrics.jsonl``'s evaluation records, without their wall-clock times."""
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [without_time(json.loads(line)) for line in lines]
