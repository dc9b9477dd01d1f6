"""Learning to Reweight (Ren et al., 2018) adapted to SSL, the paper's baseline
(Appendix C): Meta-Semi's pseudo-labelled, mixed batch U~ and its meta scores, but
Learning to Reweight's weights ``w_j = max(s_j, 0) / sum_k max(s_k, 0)`` (the clipped
negative meta-gradient normalised to sum 1; all zero stays zero, ``meta.l2rw_weights``)
in place of Eq. (9)'s 0-1 weights. Every other value is Meta-Semi's.
"""
from __future__ import annotations

from meta_semi_jax.algorithms import meta_semi
from meta_semi_jax.algorithms.common import Algorithm
from meta_semi_jax.meta import MetaGradMethod, l2rw_weights


def make(num_classes: int, *, beta: float, meta_grad: MetaGradMethod = "jvp",
         teacher_bn_mode: str = "train", pseudo_label: str = "soft",
         mixup: str = "both", log_selection_agreement: bool = False) -> Algorithm:
    """Meta-Semi's ``make`` (its arguments, ``meta_semi.Settings``) with Learning to
    Reweight's weights instead of ``weights``."""
    return meta_semi.reweighting(
        meta_semi.Settings(num_classes, beta, meta_grad, teacher_bn_mode, pseudo_label, mixup,
                           log_selection_agreement),
        l2rw_weights)
