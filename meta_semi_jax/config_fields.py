"""Every top-level field of a run's config, declared once: its default, the values it
allows and whether a resumed run may change it.

``config_base.base_config`` takes its defaults from ``FIELDS``, ``config_check`` its
per-field checks and ``checkpoint.FIXED_ON_RESUME`` the fields a resume must keep. The
algorithms' own sections (``config.<algorithm>.*``) are declared with their recipes in
``config_base.set_baseline_recipes``; a resume keeps the running algorithm's section.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from meta_semi_jax.algorithms import ALGORITHMS
from meta_semi_jax.algorithms.meta_semi import MIXUP_MODES, PSEUDO_LABELS, WEIGHT_RULES
from meta_semi_jax.augment import PAD_MODES
from meta_semi_jax.meta import META_GRAD_METHODS
from meta_semi_jax.optim import LR_SCHEDULES, OPTIMIZERS
from meta_semi_jax.parallel import PARALLEL_MODES, PLACEMENTS


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of the named values."""
    values: Iterable[str]

    def allows(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "choose one of " + ", ".join(sorted(self.values))


@dataclasses.dataclass(frozen=True)
class Range:
    """A value that passes ``test``; ``description`` completes "it must be ..."."""
    test: Callable[[Any], bool]
    description: str

    def allows(self, value: Any) -> bool:
        return self.test(value)

    def describe(self) -> str:
        return f"it must be {self.description}"


# Values whose only requirement is their type (checked by ml_collections on override),
# or that another check handles (the dataset's name, which needs the data module; the
# model's, which may import the user's module).
ANY = None

POSITIVE = Range(lambda v: v > 0, "a positive integer")
NON_NEGATIVE = Range(lambda v: v >= 0, "an integer >= 0")
FRACTION = Range(lambda v: 0 <= v < 1, "a number in [0, 1)")


@dataclasses.dataclass(frozen=True)
class Field:
    """``default``; ``allowed`` (a ``Choice``, a ``Range`` or ``ANY``); ``fixed``: True when
    a change makes a resumed run another experiment (refused on resume); ``doc``."""
    default: Any
    allowed: Choice | Range | None
    fixed: bool
    doc: str


FIELDS: dict[str, Field] = {
    # What to train.
    "algorithm": Field("meta_semi", Choice(ALGORITHMS), True,
                       "see meta_semi_jax.algorithms.ALGORITHMS"),
    "model": Field("small_cnn", ANY, True,
                   "small_cnn | cnn13 | cnn13_small | wrn28_2 | wrn28_2_scales4 | "
                   "package.module:ClassName (checked by config_check with the models "
                   "module)"),
    "dataset": Field("digits", ANY, True, "digits | fashion_mnist | cifar10 | cifar100 | "
                     "svhn | stl10 | tfds:<name> | npz:<path> | folder:<dir> (checked by "
                     "config_check with the data module)"),
    "data_dir": Field("", ANY, False, "tfds data directory ('' = tfds' default); for "
                      "fashion_mnist also the folder of its IDX files ('' = Debian's "
                      "/usr/share/datasets/fashion-mnist)"),
    "tfds_train_split": Field("train", ANY, True, "for tfds:<name> datasets"),
    "tfds_test_split": Field("test", ANY, True, "for tfds:<name> datasets"),
    "fold": Field(0, Range(lambda v: 0 <= v <= 9, "one of STL-10's predefined folds 0-9"),
                  True, "STL-10: which predefined fold is labeled"),
    "num_labels": Field(50, POSITIVE, True,
                        "labels in total, spread evenly over the classes"),
    "num_validation": Field(200, POSITIVE, True,
                            "held out from the training set, evenly per class"),
    "unlabeled_includes_labeled": Field(False, ANY, True,
                                        "the unlabeled pool also holds the labeled images"),
    "seed": Field(0, NON_NEGATIVE, True,
                  "model initialisation, batches, augmentation, MixUp"),
    "split_seed": Field(0, NON_NEGATIVE, True,
                        "which labeled/validation split (0-4: the paper's five)"),
    # Meta-Semi.
    "beta": Field(1.0, Range(lambda v: v > 0, "a number > 0"), True,
                  "MixUp's Beta(beta, beta), Eqs. (12)-(13)"),
    "meta_grad": Field("jvp", Choice(META_GRAD_METHODS), True,
                       "jvp | unrolled | per_example | finite_difference | last_layer "
                       "(meta.py; the last two are cheaper approximations)"),
    "teacher_bn_mode": Field("train", Choice(("train", "eval")), True,
                             "train | eval: BatchNorm of the EMA teacher (ICT: train)"),
    "ema_decay": Field(0.999, FRACTION, True, "0: no parameter EMA (Table 5)"),
    # Table 5's ablations of Meta-Semi (algorithms/meta_semi.py).
    "pseudo_label": Field("soft", Choice(PSEUDO_LABELS), True, "soft | one_hot"),
    "mixup": Field("both", Choice(MIXUP_MODES), True,
                   "both | unlabeled | labeled | none: which data MixUp mixes"),
    "weights": Field("meta", Choice(WEIGHT_RULES), True,
                     "meta (Eq. 9) | ones | sign (+-1)"),
    # Steps and batches (global over all devices).
    "num_train_steps": Field(2000, POSITIVE, True, "training steps"),
    "labeled_batch_size": Field(25, POSITIVE, True, "labeled examples per step"),
    "unlabeled_batch_size": Field(75, POSITIVE, True, "unlabeled examples per step"),
    "eval_batch_size": Field(500, POSITIVE, False, "examples per evaluation batch"),
    "eval_every_steps": Field(200, POSITIVE, False, "steps between evaluations"),
    "log_every_steps": Field(50, POSITIVE, False, "steps between console/log lines"),
    "log_assumption_ratio": Field(False, ANY, False,
                                  "Monte-Carlo ratio of Assumption 1 at each evaluation"),
    "log_selection_agreement": Field(False, ANY, False,
                                     "with a cheaper meta_grad, also compute the exact "
                                     "scores and log the share of selections they agree on"),
    "assumption_ratio_samples": Field(500, POSITIVE, False,
                                      "the paper's sample size (Fig. 2)"),
    "selection_probe_size": Field(1000, NON_NEGATIVE, False,
                                  "unlabeled examples with known labels whose unmixed meta "
                                  "scores each evaluation checks against their pseudo "
                                  "labels' correctness (selection.py); 0: off"),
    # Checkpoints (orbax): every so many steps and at the end; a rerun resumes.
    "checkpoint_every_steps": Field(1000, POSITIVE, False, "steps between checkpoints"),
    "max_checkpoints": Field(2, POSITIVE, False, "checkpoints kept"),
    "allow_config_change": Field(False, ANY, False,
                                 "resume although experiment-defining fields changed"),
    # Optimiser (Appendix C, CNN-13).
    "optimizer": Field("sgd", Choice(OPTIMIZERS), True,
                       "sgd (Nesterov, coupled L2) | adam (decoupled decay)"),
    "learning_rate": Field(0.1, Range(lambda v: v > 0, "a number > 0"), True,
                           "peak learning rate"),
    "lr_schedule": Field("cosine", Choice(LR_SCHEDULES), True, "cosine | constant"),
    "momentum": Field(0.9, FRACTION, True, "SGD's momentum"),
    "nesterov": Field(True, ANY, True, "SGD's Nesterov momentum"),
    "weight_decay": Field(1e-4, Range(lambda v: v >= 0, "a number >= 0"), True,
                          "L2 (sgd) or decoupled decay (adam)"),
    # Augmentation on the device.
    "translate": Field(4, NON_NEGATIVE, True, "max random shift in pixels"),
    "pad_mode": Field("zero", Choice(PAD_MODES), True,
                      "zero | reflect: how a shifted image is filled"),
    "flip": Field(True, ANY, True, "random horizontal flip"),
    # Devices and precision.
    "compute_dtype": Field("float32", Choice(("float32", "bfloat16")), True,
                           "float32 | bfloat16: convs and matmuls (params stay float32)"),
    "parallel": Field("shard_map", Choice(PARALLEL_MODES), False,
                      "shard_map | pmap: the same step either way"),
    "sync_batch_norm": Field(True, ANY, True,
                             "BatchNorm statistics over all devices (changes the "
                             "gradients on several devices)"),
    "unlabeled_placement": Field("replicated", Choice(PLACEMENTS), True,
                                 "replicated | sharded over devices | host (data/)"),
    # Independent runs trained together (run_set.py).
    "num_parallel_runs": Field(1, POSITIVE, True,
                               "K runs in one process, one vmapped step: seeds seed ... "
                               "seed+K-1, each in DIR/run_<i>"),
    "parallel_runs_share_split": Field(False, ANY, True,
                                       "the K runs all use split_seed (by default run i "
                                       "uses split_seed + i)"),
}

FIXED_ON_RESUME: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.fixed)
