"""One module per method, each with a ``make`` factory that returns an ``Algorithm``.

``config.algorithm`` picks one; every method runs through the same step, loop and
evaluation. A factory takes the number of classes and its own settings as keywords:
the fields of the config's section ``config.<algorithm>`` (the baselines' recipes,
``config_base.set_baseline_recipes``) and the top-level fields it names in
``ALGORITHMS`` (Meta-Semi's settings live at the top level). Each module's docstring
says where its values come from. Adding a method touches its module, its recipe and
its entry below.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import ml_collections

from meta_semi_jax.algorithms import (
    ict,
    l2rw,
    mean_teacher,
    mean_teacher_fast_swa,
    meta_semi,
    meta_semi_ict,
    mixmatch,
    pi_model,
    sntg,
    supervised,
    supervised_mixup,
    temporal_ensembling,
    vat,
)
from meta_semi_jax.algorithms.common import Algorithm, GradientFn, Gradients, SSLBatch


class Entry(NamedTuple):
    """An algorithm's factory and the top-level config fields it takes."""
    make: Callable[..., Algorithm]
    top_level_fields: tuple[str, ...] = ()


# Meta-Semi's settings, the top-level config fields of the methods built on it.
META_SEMI_FIELDS = ("beta", "meta_grad", "teacher_bn_mode", "pseudo_label", "mixup", "weights",
                    "log_selection_agreement")

ALGORITHMS: dict[str, Entry] = {
    "supervised": Entry(supervised.make),
    "supervised_mixup": Entry(supervised_mixup.make),
    "pi_model": Entry(pi_model.make),
    "temporal_ensembling": Entry(temporal_ensembling.make),
    "mean_teacher": Entry(mean_teacher.make, ("teacher_bn_mode",)),
    "mean_teacher_fast_swa": Entry(mean_teacher_fast_swa.make, ("teacher_bn_mode",)),
    "vat": Entry(vat.make),
    "sntg": Entry(sntg.make, ("teacher_bn_mode",)),
    "ict": Entry(ict.make, ("teacher_bn_mode",)),
    "mixmatch": Entry(mixmatch.make),
    # Learning to Reweight brings its own weights.
    "l2rw": Entry(l2rw.make, tuple(f for f in META_SEMI_FIELDS if f != "weights")),
    "meta_semi": Entry(meta_semi.make, META_SEMI_FIELDS),
    "meta_semi_ict": Entry(meta_semi_ict.make, META_SEMI_FIELDS),
}


def settings_from_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keywords ``config.algorithm``'s factory takes: its top-level fields and its
    own section's fields."""
    entry = ALGORITHMS[config.algorithm]
    section = config.get(config.algorithm)
    own = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else {}
    return {**{name: config[name] for name in entry.top_level_fields}, **own}


def from_config(config: ml_collections.ConfigDict, num_classes: int) -> Algorithm:
    """``config.algorithm`` made with its settings from ``config``."""
    return ALGORITHMS[config.algorithm].make(num_classes, **settings_from_config(config))


__all__ = ["ALGORITHMS", "Algorithm", "Entry", "GradientFn", "Gradients", "META_SEMI_FIELDS",
           "SSLBatch", "from_config", "settings_from_config"]
