"""Meta-Semi + ICT, Eq. (14): ``L = L_meta + w L_consistency`` with ICT's interpolation
consistency as ``L_consistency``.

``L_meta`` is Meta-Semi's (``meta_semi.py``, every switch included); the ICT term
(``ict.consistency_term``) mixes pairs of the unlabeled batch U with
``lam ~ Beta(alpha, alpha)`` and uses Meta-Semi's EMA pseudo labels of U as the
teacher's predictions, so it costs one more forward pass. The paper does not give
``w``; the default is ICT's recipe (``config.meta_semi_ict.weight`` 100 with a
sigmoid ramp-up over the first quarter of training, ``.alpha`` as ICT's).
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms import ict, meta_semi
from meta_semi_jax.algorithms.common import Gradients, HParams, SSLBatch
from meta_semi_jax.state import TrainState


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradients of Eq. (14) for one batch (``key`` equal on every device)."""
    return meta_semi.gradients(
        state, batch, key, hparams, axis_name,
        extra_loss=ict.consistency_term(state, batch.unlabeled_images, hparams, axis_name))
