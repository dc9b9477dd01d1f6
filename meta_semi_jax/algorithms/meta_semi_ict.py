"""Meta-Semi + ICT, Eq. (14): ``L = L_meta + w L_consistency`` with ICT's interpolation
consistency as ``L_consistency``.

``L_meta`` is Meta-Semi's (``meta_semi.py``, every switch included); the ICT term
(``ict.consistency_term``) mixes pairs of the unlabeled batch U with
``lam ~ Beta(alpha, alpha)`` against the softmax of the mixed logits of the EMA teacher
pass that also makes Meta-Semi's pseudo labels, as ICT does, so it costs one more
forward pass of the student. Table 5's ``pseudo_label='one_hot'`` changes Meta-Semi's
targets, not this term's. The paper does not give ``w``; the default is ICT's recipe
(``config.meta_semi_ict.weight`` 100 with a sigmoid ramp-up over the first quarter of
training, ``.alpha`` as ICT's).
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms import ict, meta_semi
from meta_semi_jax.algorithms.common import Algorithm, SSLBatch
from meta_semi_jax.meta import MetaGradMethod
from meta_semi_jax.state import TrainState


def make(num_classes: int, *, alpha: float, weight: float, rampup_steps: int, beta: float,
         meta_grad: MetaGradMethod = "jvp", teacher_bn_mode: str = "train",
         pseudo_label: str = "soft", mixup: str = "both", weights: str = "meta",
         log_selection_agreement: bool = False) -> Algorithm:
    """Meta-Semi's ``make`` (``beta`` ... ``weights``) plus ICT's consistency term with
    Beta(alpha, alpha) and weight ``weight`` ramped up over ``rampup_steps``."""
    def consistency(state: TrainState, batch: SSLBatch, teacher_logits: jax.Array,
                    axis_name: str | None) -> meta_semi.ExtraLoss:
        return ict.consistency_term(state, batch.unlabeled_images, teacher_logits,
                                    alpha=alpha, weight=weight, rampup_steps=rampup_steps,
                                    axis_name=axis_name)
    return meta_semi.reweighting(
        meta_semi.Settings(num_classes, beta, meta_grad, teacher_bn_mode, pseudo_label, mixup,
                           log_selection_agreement),
        meta_semi.WEIGHT_RULES[weights], extra_loss=consistency)
