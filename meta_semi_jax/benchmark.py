"""Times the full jitted training step and reports its compiled memory.

    python -m meta_semi_jax.benchmark --model=cnn13 --json=bench.json
    python -m meta_semi_jax.benchmark --model=wrn28_2_scales4   # STL-10
    python -m meta_semi_jax.benchmark --algorithms=meta_semi:jvp@bfloat16,ict@bfloat16
    python -m meta_semi_jax.benchmark --model=small_cnn --steps=5 --warmup=1
    python -m meta_semi_jax.benchmark --algorithms=meta_semi:jvp,meta_semi:jvp*2,meta_semi:jvp*5

Each row is one ``algorithm[:meta_grad][@compute_dtype][*runs]`` on the paper's batch
and image size for the model (``--image_size`` changes the size); ``*K`` times the
step of K parallel runs (``run_set``: one vmapped step, ``images_per_s`` counting the
images of all K runs),
with data already on the device: the program's own step (on-device sampling,
augmentation, MixUp, meta-gradient, update), compiled, warmed up, then timed step by
step with ``block_until_ready``; the median is reported. ``images_per_s`` counts the
labeled and unlabeled images of a step's batch. ``peak_bytes`` is XLA's memory
analysis of the compiled step (arguments + outputs + temporaries - aliased), ``flops``
XLA's cost analysis of it (the count a GPU estimate starts from).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags

from meta_semi_jax import build, data as data_lib, run_set
from meta_semi_jax.config_base import base_config
from meta_semi_jax.data.split import SplitIndices


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model at the batch and image size of the experiments that use it."""
    image_shape: tuple[int, int, int]
    labeled_batch_size: int
    unlabeled_batch_size: int
    num_classes: int = 10


WORKLOADS: dict[str, Workload] = {
    "cnn13": Workload((32, 32, 3), 25, 75),        # CIFAR, Appendix C
    "wrn28_2": Workload((32, 32, 3), 32, 96),      # CIFAR, MixMatch's WRN recipe
    "wrn28_2_scales4": Workload((96, 96, 3), 32, 96),  # STL-10, MixMatch's network for it
    "small_cnn": Workload((8, 8, 1), 32, 96),      # digits
    "cnn13_small": Workload((28, 28, 1), 25, 75),  # Fashion-MNIST on a CPU
}
DEFAULT_ROWS = ("meta_semi:jvp", "meta_semi:per_example", "meta_semi:unrolled", "ict",
                "supervised")

_MODEL = flags.DEFINE_enum("model", "cnn13", list(WORKLOADS), "Model to time.")
_ROWS = flags.DEFINE_list("algorithms", list(DEFAULT_ROWS),
                          "algorithm[:meta_grad][@dtype][*runs], e.g. meta_semi:unrolled "
                          "or meta_semi:jvp@bfloat16*5.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Image height and width (default: the model's dataset).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def synthetic_data(workload: Workload, pool: int = 1000) -> data_lib.SSLData:
    """Random uint8 images and labels: the step's cost does not depend on their values."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (pool,) + workload.image_shape, dtype=np.uint8)
    labels = rng.integers(0, workload.num_classes, pool).astype(np.int32)
    half = pool // 2
    split = SplitIndices(np.arange(half), np.arange(half, pool), np.arange(half))
    mean, std = data_lib.channel_mean_std(images)
    return data_lib.SSLData(
        labeled_images=images[:half], labeled_labels=labels[:half],
        unlabeled_images=images[half:], unlabeled_labels=labels[half:],
        val_images=images[:half], val_labels=labels[:half], test_images=images[:half],
        test_labels=labels[:half], num_classes=workload.num_classes, mean=mean, std=std,
        split=split)


def peak_bytes(compiled) -> int | None:
    """XLA's estimate of the compiled step's peak device memory, if the backend has one."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def step_flops(compiled) -> float | None:
    """XLA's count of the compiled step's floating-point operations, if available."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def time_row(workload: Workload, model: str, row: str, steps: int,
             warmup: int) -> dict[str, Any]:
    """Median step time and compiled memory of one ``algorithm[:meta_grad][@dtype]``."""
    row, _, runs = row.partition("*")
    num_runs = int(runs or 1)
    row, _, dtype = row.partition("@")
    algorithm, _, meta_grad = row.partition(":")
    config = base_config()
    config.model, config.algorithm, config.meta_grad = model, algorithm, meta_grad or "jvp"
    config.compute_dtype = dtype or "float32"
    config.labeled_batch_size = workload.labeled_batch_size
    config.unlabeled_batch_size = workload.unlabeled_batch_size
    config.translate, config.flip = 2, True
    ssl = synthetic_data(workload)
    trainings = [build.build_training(config, ssl) for _ in range(num_runs)]
    axis = run_set.RunAxis(trainings[0].dp, num_runs)
    state, key = (axis.stack([getattr(t, field) for t in trainings])
                  for field in ("state", "run_key"))
    data = axis.place([build.host_pools(ssl)] * num_runs)
    compiled = run_set.joint_step(trainings).lower(state, data, key).compile()
    for _ in range(1 + warmup):
        state, metrics = compiled(state, data, key)
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = compiled(state, data, key)
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - started)
    ms = 1000 * statistics.median(seconds)
    images = num_runs * (workload.labeled_batch_size + workload.unlabeled_batch_size)
    return {"algorithm": algorithm, "meta_grad": meta_grad or None, "model": model,
            "compute_dtype": config.compute_dtype, "image_size": workload.image_shape[0],
            "num_runs": num_runs,
            "ms_per_step": ms, "images_per_s": images / (ms / 1000),
            "peak_bytes": peak_bytes(compiled), "flops": step_flops(compiled)}


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds ``ratio_to_ict`` (each row's time over the single ict step's, when one was
    timed)."""
    ict = next((r["ms_per_step"] for r in rows
                if r["algorithm"] == "ict" and r["num_runs"] == 1), None)
    return [{**r, "ratio_to_ict": r["ms_per_step"] / ict if ict else None} for r in rows]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| algorithm | meta_grad | model | dtype | image | runs | ms/step | images/s "
             "| ratio to ict | peak MiB | GFLOP/step |", "|---" * 11 + "|"]
    for r in rows:
        ratio = f"{r['ratio_to_ict']:.2f}" if r["ratio_to_ict"] else "-"
        peak = f"{r['peak_bytes'] / 2**20:.1f}" if r["peak_bytes"] is not None else "-"
        flops = f"{r['flops'] / 1e9:.1f}" if r["flops"] is not None else "-"
        lines.append(f"| {r['algorithm']} | {r['meta_grad'] or '-'} | {r['model']} | "
                     f"{r['compute_dtype']} | {r['image_size']} | {r['num_runs']} | "
                     f"{r['ms_per_step']:.1f} | "
                     f"{r['images_per_s']:.0f} | {ratio} | {peak} | {flops} |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    del argv
    workload = WORKLOADS[_MODEL.value]
    if _IMAGE_SIZE.value:
        size = _IMAGE_SIZE.value
        workload = dataclasses.replace(workload, image_shape=(size, size,
                                                              workload.image_shape[2]))
    rows = with_ratios([time_row(workload, _MODEL.value, row, _STEPS.value, _WARMUP.value)
                        for row in _ROWS.value])
    print(f"{jax.devices()[0].device_kind} x {jax.device_count()}")
    print(table(rows))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
