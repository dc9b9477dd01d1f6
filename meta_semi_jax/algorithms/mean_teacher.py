"""Mean Teacher (Tarvainen & Valpola, 2017): the student's predictions should agree with
those of its parameter EMA (the teacher) on another augmentation of the same image.

Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f_ema(aug2(u))||^2 / C``
(no gradient into the teacher). Recipe (Mean Teacher's CIFAR-10 setting): consistency
weight 100 with the MSE, sigmoid ramp-up over the first 5 epochs
(``config.mean_teacher.weight`` / ``.rampup_steps``); the teacher is the run's EMA
(``config.ema_decay``) in ``teacher_bn_mode``. The factory asks for two unlabeled views.
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    labeled_and_consistency_gradients,
    pseudo_labels,
    ramped_weight,
)
from meta_semi_jax.state import TrainState


def make(num_classes: int, *, weight: float, rampup_steps: int,
         teacher_bn_mode: str) -> Algorithm:
    """Mean Teacher with maximum consistency weight ``weight``, ramped up over
    ``rampup_steps``, and the EMA teacher's BatchNorm in ``teacher_bn_mode``."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        del key
        views = batch.unlabeled_views()
        teacher = pseudo_labels(state, views[1], teacher_bn_mode)
        return labeled_and_consistency_gradients(
            state, batch.labeled_images, jax.nn.one_hot(batch.labels, num_classes), views[0],
            lambda params, batch_stats: (teacher, batch_stats),
            ramped_weight(state, weight, rampup_steps, "sigmoid"), axis_name)
    return Algorithm(gradients, unlabeled_views=2)
