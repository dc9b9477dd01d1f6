"""One module per method; each exposes ``gradients(state, batch, key, hparams, axis_name)``.

``config.algorithm`` picks one; every method runs through the same step, loop and
evaluation. Each module's docstring says where its hyper-parameters come from.
"""
from __future__ import annotations

from meta_semi_jax.algorithms import (
    ict,
    l2rw,
    mean_teacher,
    meta_semi,
    meta_semi_ict,
    mixmatch,
    pi_model,
    supervised,
    supervised_mixup,
)
from meta_semi_jax.algorithms.common import GradientFn, Gradients, HParams, SSLBatch

ALGORITHMS: dict[str, GradientFn] = {
    "supervised": supervised.gradients,
    "supervised_mixup": supervised_mixup.gradients,
    "pi_model": pi_model.gradients,
    "mean_teacher": mean_teacher.gradients,
    "ict": ict.gradients,
    "mixmatch": mixmatch.gradients,
    "l2rw": l2rw.gradients,
    "meta_semi": meta_semi.gradients,
    "meta_semi_ict": meta_semi_ict.gradients,
}

# Algorithms whose loss compares two augmentations of each unlabeled image.
TWO_VIEW_ALGORITHMS: tuple[str, ...] = ("pi_model", "mean_teacher")
# Algorithms that run Meta-Semi's reweighting (its switches and diagnostics apply).
META_ALGORITHMS: tuple[str, ...] = ("meta_semi", "meta_semi_ict", "l2rw")

__all__ = ["ALGORITHMS", "GradientFn", "Gradients", "HParams", "META_ALGORITHMS", "SSLBatch",
           "TWO_VIEW_ALGORITHMS"]
