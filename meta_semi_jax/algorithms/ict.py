"""Interpolation Consistency Training (Verma et al., 2019), the paper's reference for CNN-13.

Loss: ``mean CE(f(MixUp(X)), MixUp(y)) + w(t) * mean softmax_mse(f(Mix_lam(u_j, u_k)),
softmax(Mix_lam(z_j, z_k)))`` with ``z = f_ema(u)`` the teacher's logits (ICT's code
mixes the logits and its ``softmax_mse_loss`` takes the softmax of the mix),
``lam ~ Beta(alpha, alpha)`` per batch and partners by one random permutation of the
(global) batch; the supervised term mixes too (ICT's code, ``mixup_sup_alpha``).
Recipe (ICT's published CNN-13 commands): alpha 1.0 on CIFAR and 0.1 on SVHN for both
MixUps, ``w_max = 100`` with a sigmoid ramp-up over the first quarter of training
(``config.ict.alpha`` / ``.weight`` / ``.rampup_steps``); the teacher is the EMA model
in ``teacher_bn_mode`` (ICT: train mode), whose BatchNorm statistics come from its own
passes over the clean batch (``common.teacher_on_clean_images``, as ICT's code).
``consistency_term`` is also Meta-Semi + ICT's Eq. (14) term.
"""
from __future__ import annotations

from typing import Any

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    forward_train,
    global_mean,
    gradients_of,
    mix_global,
    psum_if,
    ramped_weight,
    teacher_on_clean_images,
)
from meta_semi_jax.losses import soft_cross_entropy, softmax_mse
from meta_semi_jax.mixup import sample_mixup_lambda
from meta_semi_jax.state import TrainState


def consistency_term(state: TrainState, unlabeled_images: jax.Array, teacher: jax.Array, *,
                     alpha: float, weight: float, rampup_steps: int, axis_name: str | None):
    """ICT's weighted interpolation-consistency loss as a function
    ``(params, batch_stats, key) -> (device share, batch_stats)``: the student on
    ``Mix_lam(u_j, u_k)``, ``lam ~ Beta(alpha, alpha)``, against the softmax of
    ``Mix_lam`` of the ``teacher``'s logits, weighted by ``weight`` times its sigmoid
    ramp-up over ``rampup_steps``."""
    ramped = ramped_weight(state, weight, rampup_steps, "sigmoid")

    def term(params: Any, batch_stats: Any, key: jax.Array) -> tuple[jax.Array, Any]:
        k_lam, k_perm = jax.random.split(key)
        mixed = mix_global(k_perm, unlabeled_images, jax.lax.stop_gradient(teacher),
                           sample_mixup_lambda(k_lam, alpha), axis_name)
        logits, batch_stats = forward_train(state, params, mixed.inputs, batch_stats)
        targets = jax.nn.softmax(mixed.targets)
        return ramped * global_mean(softmax_mse(logits, targets), axis_name), batch_stats

    return term


def make(num_classes: int, *, alpha: float, weight: float, rampup_steps: int,
         teacher_bn_mode: str) -> Algorithm:
    """ICT with Beta(alpha, alpha) for both MixUps, maximum consistency weight ``weight``
    ramped up over ``rampup_steps``, and the EMA teacher's BatchNorm in
    ``teacher_bn_mode``."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        k_lam, k_perm, k_consistency = jax.random.split(key, 3)
        mixed_x = mix_global(k_perm, batch.labeled_images,
                             jax.nn.one_hot(batch.labels, num_classes),
                             sample_mixup_lambda(k_lam, alpha), axis_name)
        teacher = teacher_on_clean_images(state, batch.unlabeled_images, batch.labeled_images,
                                          teacher_bn_mode)
        consistency = consistency_term(state, batch.unlabeled_images, teacher.logits,
                                       alpha=alpha, weight=weight, rampup_steps=rampup_steps,
                                       axis_name=axis_name)

        def objective(params: Any):
            logits, batch_stats = forward_train(state, params, mixed_x.inputs)
            supervised = global_mean(soft_cross_entropy(logits, mixed_x.targets), axis_name)
            weighted, batch_stats = consistency(params, batch_stats, k_consistency)
            return supervised + weighted, (batch_stats, supervised)

        return gradients_of(objective, state, lambda supervised: {
            "labeled_loss": psum_if(supervised, axis_name),
            "consistency_weight": ramped_weight(state, weight, rampup_steps, "sigmoid")},
            axis_name, ema_batch_stats=teacher.batch_stats)
    return Algorithm(gradients)
