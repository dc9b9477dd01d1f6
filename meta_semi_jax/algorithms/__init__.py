"""One module per method; each exposes ``gradients(state, batch, key, hparams, axis_name)``."""
from __future__ import annotations

from meta_semi_jax.algorithms import meta_semi, supervised
from meta_semi_jax.algorithms.common import GradientFn, Gradients, HParams, SSLBatch

ALGORITHMS: dict[str, GradientFn] = {
    "meta_semi": meta_semi.gradients,
    "supervised": supervised.gradients,
}

__all__ = ["ALGORITHMS", "GradientFn", "Gradients", "HParams", "SSLBatch"]
