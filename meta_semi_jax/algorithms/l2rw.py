"""Learning to Reweight (Ren et al., 2018) adapted to SSL, the paper's baseline
(Appendix C): Meta-Semi's pseudo-labelled, mixed batch U~ and its meta scores, but
Learning to Reweight's weights ``w_j = max(s_j, 0) / sum_k max(s_k, 0)`` (the clipped
negative meta-gradient normalised to sum 1; all zero stays zero) in place of Eq. (9)'s
0-1 weights. Every other value is Meta-Semi's.
"""
from __future__ import annotations

import dataclasses

import jax

from meta_semi_jax.algorithms import meta_semi
from meta_semi_jax.algorithms.common import Gradients, HParams, SSLBatch
from meta_semi_jax.state import TrainState


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradients of ``sum_j w_j L_j`` with Learning to Reweight's weights."""
    return meta_semi.gradients(state, batch, key, dataclasses.replace(hparams, weights="l2rw"),
                               axis_name)
