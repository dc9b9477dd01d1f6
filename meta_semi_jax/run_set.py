"""Several independent runs trained in one process by one vmapped step
(``config.num_parallel_runs = K``).

Run ``i`` of a set is the run of ``run_config(config, i)``: seed ``seed + i`` and split
seed ``split_seed + i`` (``split_seed`` for all with ``parallel_runs_share_split``),
with ``num_parallel_runs=1``: trained alone with that config it takes the same steps up
to float rounding (exact in float64: ``test_parallel``; in float32 the rounding grows
along the run as under another device count). Its files go to ``DIR/run_<i>`` as a
single run's go to its workdir (config, split, model card, metrics, TensorBoard,
checkpoints, results), so
``evaluate``, ``predict`` and ``export`` read it like any run.

The step is ``jax.vmap`` of the per-device step over a leading run axis of the train
state, the data and the run keys, inside the device axis (``shard_map`` or ``pmap``):
one program for K runs, which on an accelerator fills what one small step leaves idle.
Everything else stays per run (``build.Training``: evaluators, selection probe,
Assumption 1's ratio, the evaluated model); each reads its run's slice of the state.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from meta_semi_jax.build import Training
from meta_semi_jax.parallel import DataParallel


def run_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """The config of run ``index`` of ``config``'s set of parallel runs, as a single run."""
    single = ml_collections.ConfigDict(config.to_dict())
    single.seed = config.seed + index
    if not config.parallel_runs_share_split:
        single.split_seed = config.split_seed + index
    single.num_parallel_runs = 1
    return single


def run_dir(workdir: str, index: int) -> str:
    """Where run ``index`` of a set of parallel runs writes its files."""
    return os.path.join(workdir, f"run_{index}")


class RunAxis:
    """The leading run axis of stacked trees, replicated over ``dp``'s devices (under
    pmap after the device axis). With one run there is no run axis: ``stack`` and
    ``take`` pass the run's tree through, so a single run is exactly as before."""

    def __init__(self, dp: DataParallel, num_runs: int):
        self.dp = dp
        self.num_runs = num_runs
        # Every run's slice in one compiled call: the loop splits each step's metrics.
        self._split = jax.jit(lambda tree: [self.take(tree, i) for i in range(num_runs)])

    def stack(self, trees: Sequence[Any]) -> Any:
        """The runs' replicated trees as one replicated tree with a run axis (stacked on
        the host, once per run set)."""
        if self.num_runs == 1:
            return trees[0]
        return self.place([self.dp.unreplicate(tree) for tree in trees])

    def place(self, host_trees: Sequence[Any]) -> Any:
        """The runs' trees on the host as one replicated tree with a run axis, placed
        once: a set's training pools (``build.host_pools``) go to the devices only so, as
        a run's own pools would be a second copy of them. One run: its tree, replicated."""
        if self.num_runs == 1:
            return self.dp.replicate(host_trees[0])
        hosts = [jax.tree.leaves(tree) for tree in host_trees]
        # The first run's structure: its static fields (the train state's model and
        # optimiser functions) are equal in every run, as objects of their own.
        stacked = [np.stack(leaves) for leaves in zip(*hosts, strict=True)]
        return self.dp.replicate(jax.tree.unflatten(jax.tree.structure(host_trees[0]),
                                                    stacked))

    def split(self, tree: Any) -> list[Any]:
        """Each run's slice of a stacked replicated tree (``take`` of every run, as one
        call)."""
        return [tree] if self.num_runs == 1 else self._split(tree)

    def take(self, tree: Any, index: int) -> Any:
        """Run ``index``'s slice of a stacked replicated tree (still replicated)."""
        if self.num_runs == 1:
            return tree
        if self.dp.mode == "pmap":
            return jax.tree.map(lambda x: x[:, index], tree)
        return jax.tree.map(lambda x: x[index], tree)


def vmapped_step(dp: DataParallel, device_step: Callable[..., Any],
                 data_kinds: Any) -> jax.stages.Wrapped:
    """The compiled step of several runs together: ``device_step`` (the per-device step
    over ``AXIS``, ``step.device_train_step``) vmapped over a leading run axis of its
    three arguments, ``(stacked state, stacked data, stacked run keys) -> (stacked
    state, stacked metrics)``; the state is donated as a single run's is."""
    return dp.run(jax.vmap(device_step), ("replicated", data_kinds, "replicated"),
                  donate_argnums=(0,))


def joint_step(trainings: Sequence[Training]) -> jax.stages.Wrapped:
    """The step of the runs: a single run's own ``step_fn``, else ``vmapped_step``."""
    first = trainings[0]
    if len(trainings) == 1:
        return first.step_fn
    return vmapped_step(first.dp, first.device_step, first.data_kinds)


SUMMARISED = ("test_error", "best_val_test_error")


def summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The set's results.json: each run's results, and the mean and sample standard
    deviation over the runs of the test errors (the paper's mean +- std)."""
    record: dict[str, Any] = {"num_parallel_runs": len(results), "runs": list(results)}
    for key in SUMMARISED:
        values = np.asarray([r[key] for r in results], np.float64)
        record[f"{key}_mean"] = float(values.mean())
        record[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return record
