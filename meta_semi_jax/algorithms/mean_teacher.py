"""Mean Teacher (Tarvainen & Valpola, 2017): the student's predictions should agree with
those of its parameter EMA (the teacher) on another augmentation of the same image.

Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f_ema(aug2(u))||^2 / C``
(no gradient into the teacher). Recipe (Mean Teacher's CIFAR-10 setting): consistency
weight 100 with the MSE, sigmoid ramp-up over the first 5 epochs
(``config.mean_teacher.weight`` / ``.rampup_steps``); the teacher is the run's EMA
(``config.ema_decay``) in ``teacher_bn_mode``. Views from ``unlabeled_views=2``.
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Gradients,
    HParams,
    SSLBatch,
    labeled_and_consistency_gradients,
    pseudo_labels,
    unlabeled_loss_weight,
)
from meta_semi_jax.state import TrainState


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradients of the Mean Teacher loss on one batch with two unlabeled views."""
    del key
    views = batch.unlabeled_views()
    teacher = pseudo_labels(state, views[1], hparams.teacher_bn_mode)
    return labeled_and_consistency_gradients(
        state, batch.labeled_images, jax.nn.one_hot(batch.labels, hparams.num_classes),
        views[0], lambda params, batch_stats: (teacher, batch_stats),
        unlabeled_loss_weight(state, hparams, "sigmoid"), axis_name)
