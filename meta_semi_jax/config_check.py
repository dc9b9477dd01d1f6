"""Checks of a run's config, before anything is computed or written.

Every problem is reported as one ``ConfigError`` line that names the field, the bad
value and what is allowed; ``main`` prints it and exits with status 2.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from meta_semi_jax import algorithms
from meta_semi_jax.algorithms import ALGORITHMS
from meta_semi_jax.config_fields import FIELDS
from meta_semi_jax.data import DATASET_CHOICES, is_known_dataset
from meta_semi_jax.models import NOISY_MODELS, model_constructor


class ConfigError(ValueError):
    """A config value that cannot be run; the message is one line for the user."""


# Top-level fields that only some algorithms read (``ALGORITHMS``): another algorithm
# runs only with the default, so that a value is never silently ignored. ``beta`` is
# not among them: the dataset configs set it, for the algorithms that read it.
ALGORITHM_SWITCHES = ("meta_grad", "teacher_bn_mode", "pseudo_label", "mixup", "weights")

# field of config.<algorithm> -> (test, what it allows)
ALGORITHM_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "alpha": (lambda v: v > 0, "a number > 0"),
    "weight": (lambda v: v >= 0, "a number >= 0"),
    "rampup_steps": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "temperature": (lambda v: v > 0, "a number > 0"),
    "augmentations": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "noisy_network": (lambda v: isinstance(v, bool), "True or False"),
    "ema_warmup": (lambda v: isinstance(v, bool), "True or False"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "epsilon": (lambda v: v > 0, "a number > 0"),
    "graph_weight": (lambda v: v >= 0, "a number >= 0"),
    "margin": (lambda v: v > 0, "a number > 0"),
    "lr_decay_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "cycle_start_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "cycle_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "average_every_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "bn_batches": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
}

DIVISIBLE_BY_DEVICES = ("labeled_batch_size", "unlabeled_batch_size", "eval_batch_size")


def _fail(config: ml_collections.ConfigDict, field: str, allowed: str) -> ConfigError:
    return ConfigError(f"config.{field}={config[field]!r} is not allowed: {allowed}")


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ``ConfigError`` for the first field whose value cannot be run; needs no data."""
    if not is_known_dataset(config.dataset):
        raise _fail(config, "dataset", "choose one of " + DATASET_CHOICES)
    try:
        model_constructor(config.model)
    except ValueError as e:
        raise _fail(config, "model", str(e)) from None
    for name, field in FIELDS.items():
        if field.allowed is not None and not field.allowed.allows(config[name]):
            raise _fail(config, name, field.allowed.describe())
    check_algorithm_fields(config)
    check_algorithm_needs(config)
    check_score_method(config)
    if config.log_assumption_ratio and config.unlabeled_placement == "host":
        raise _fail(config, "log_assumption_ratio", "its random batches are drawn from the "
                    "unlabeled pool on the devices: it needs config.unlabeled_placement "
                    "'replicated' or 'sharded'")
    if config.num_parallel_runs > 1 and config.unlabeled_placement != "replicated":
        raise _fail(config, "num_parallel_runs", "the runs' pools are stacked along a run "
                    "axis on every device: it needs config.unlabeled_placement "
                    "'replicated'")
    for name in DIVISIBLE_BY_DEVICES:
        if config[name] % num_devices:
            raise _fail(config, name,
                        f"it must be a multiple of the number of devices ({num_devices})")


def check_algorithm_needs(config: ml_collections.ConfigDict) -> None:
    """What the algorithm, as its factory makes it, needs from the model and the data
    (making it computes nothing; the class count does not change what it needs)."""
    algorithm = algorithms.from_config(config, num_classes=2)
    if algorithm.noisy_network and config.model not in NOISY_MODELS:
        raise ConfigError(f"config.{config.algorithm}.noisy_network=True needs a model "
                          f"with the network noise ({', '.join(NOISY_MODELS)}), not "
                          f"config.model={config.model!r}")
    if algorithm.init_state is not None and config.unlabeled_placement == "host":
        raise _fail(config, "unlabeled_placement", f"{config.algorithm} keeps state on the "
                    f"devices that reads the unlabeled pool there (a value per pool image, "
                    f"or a weight average whose BatchNorm statistics are recomputed from "
                    f"the pool): it needs 'replicated' or 'sharded'")
    cycles = algorithm.lr_cycles
    if cycles is not None:
        if config.lr_schedule != "cosine":
            raise _fail(config, "lr_schedule", f"{config.algorithm} trains with cosine "
                        f"learning-rate cycles: it needs 'cosine'")
        if cycles.cycle_steps > cycles.start_steps:
            raise ConfigError(
                f"config.{config.algorithm}.cycle_steps={cycles.cycle_steps} is not allowed: "
                f"each cycle repeats the cosine's last cycle_steps before cycle_start_steps "
                f"({cycles.start_steps}), so it must not exceed it")
    if config.log_assumption_ratio and algorithm.assumption_terms is None:
        raise _fail(config, "log_assumption_ratio", "Assumption 1 is about L_meta: it needs "
                    "config.algorithm='meta_semi'")


def check_score_method(config: ml_collections.ConfigDict) -> None:
    """The limits of the cheaper scores (meta.py): finite differences need float32, and
    the agreement diagnostic compares a cheaper score of Meta-Semi's reweighting with
    the exact one."""
    if config.meta_grad == "finite_difference" and config.compute_dtype != "float32":
        raise _fail(config, "meta_grad", "finite differences of the losses need "
                    "config.compute_dtype='float32' (a bfloat16 pass rounds more than the "
                    "difference it measures); in bfloat16 use jvp or last_layer")
    if not config.log_selection_agreement:
        return
    if "log_selection_agreement" not in ALGORITHMS[config.algorithm].top_level_fields:
        raise _fail(config, "log_selection_agreement", "it compares the Eq. (9) selections "
                    "of Meta-Semi's reweighting: it needs config.algorithm meta_semi, "
                    "meta_semi_ict or l2rw")
    if config.meta_grad == "jvp":
        raise _fail(config, "log_selection_agreement", "it compares config.meta_grad with "
                    "the exact jvp: set config.meta_grad to last_layer, finite_difference, "
                    "unrolled or per_example")


def check_algorithm_fields(config: ml_collections.ConfigDict) -> None:
    """The running algorithm's own values, and the switches of some algorithms (Table 5's
    ablations, the meta score, the teacher's BatchNorm mode) only where they apply."""
    own = config.get(config.algorithm)
    if isinstance(own, ml_collections.ConfigDict):
        for field, value in own.items():
            test, allowed = ALGORITHM_RANGES[field]
            if not test(value):
                raise ConfigError(f"config.{config.algorithm}.{field}={value!r} is not "
                                  f"allowed: it must be {allowed}")
    taken = ALGORITHMS[config.algorithm].top_level_fields
    for field in ALGORITHM_SWITCHES:
        default = FIELDS[field].default
        if field not in taken and config[field] != default:
            readers = [name for name, entry in ALGORITHMS.items()
                       if field in entry.top_level_fields]
            raise _fail(config, field, f"config.algorithm={config.algorithm!r} does not use "
                        f"it, only {', '.join(readers)} do; it takes only {default!r}")


def check_processes(config: ml_collections.ConfigDict, num_processes: int) -> None:
    """pmap here feeds the devices of one process; several processes use shard_map."""
    if num_processes > 1 and config.parallel == "pmap":
        raise _fail(config, "parallel", f"a run over {num_processes} processes needs "
                    f"shard_map (pmap is supported within one process)")


def check_label_counts(config: ml_collections.ConfigDict, num_classes: int,
                       fold_size: int | None = None) -> None:
    """Label and validation counts that the dataset's classes (or STL-10's folds) allow."""
    if fold_size is not None:
        if config.num_labels != fold_size:
            raise _fail(config, "num_labels", f"{config.dataset} takes its labels from a "
                        f"predefined fold of {fold_size} images")
    elif config.num_labels % num_classes:
        raise _fail(config, "num_labels", f"it must be a multiple of the {num_classes} "
                    f"classes of {config.dataset}, the same number per class")
    if config.num_validation % num_classes:
        raise _fail(config, "num_validation", f"it must be a multiple of the {num_classes} "
                    f"classes of {config.dataset}, the same number per class")


def check_pool_size(config: ml_collections.ConfigDict, max_per_class: int,
                    num_classes: int) -> None:
    """The validation and label counts against the data actually loaded;
    ``max_per_class`` is what the smallest class keeps after validation."""
    if max_per_class <= 0:
        smallest = max_per_class + config.num_validation // num_classes
        raise _fail(config, "num_validation",
                    f"it must leave training images in every class, and the smallest class "
                    f"of {config.dataset} has {smallest}")
    if config.num_labels // num_classes > max_per_class:
        raise _fail(config, "num_labels",
                    f"{config.dataset} keeps at most {max_per_class} labels per class after "
                    f"holding out {config.num_validation} for validation, i.e. at most "
                    f"{max_per_class * num_classes} labels")


def check_batch_sizes(config: ml_collections.ConfigDict, num_unlabeled: int) -> None:
    """An unlabeled batch can be drawn without repeating an example within it. A
    labeled batch may be larger than the labeled set: it then spans several of its
    epochs (``sampler.epoch_shuffled_indices``)."""
    if config.unlabeled_batch_size > num_unlabeled:
        raise _fail(config, "unlabeled_batch_size",
                    f"it must not exceed the {num_unlabeled} unlabeled examples")
