"""Mean Teacher (Tarvainen & Valpola, 2017): the student's predictions should agree with
those of its parameter EMA (the teacher) on another augmentation of the same image.

Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f_ema(aug2(u))||^2 / C``
(no gradient into the teacher). Recipe (Mean Teacher's CIFAR-10 CNN-13 runs, its
TensorFlow ``experiments/cifar10_final_eval.py`` with ``Model.DEFAULT_HYPERPARAMS``):
maximum consistency weight ``100 * num_labels / num_train_images``, sigmoid ramp-up
over 80 passes over the training images (its 40,000 steps of 100 images over CIFAR-10's
50,000; here over the images left after the validation split, at the run's batch:
36,000 steps on CIFAR-10), EMA decay at its maximum from the first step
(``ema_warmup=False``: its ``ema_decay_during_rampup`` equals the later 0.999), and
Gaussian input noise 0.15 and dropout 0.5 in student and teacher (``noisy_network``):
``config.mean_teacher.*``. The teacher is the run's EMA (``config.ema_decay``) in
``teacher_bn_mode``, with BatchNorm statistics of its own passes over the clean batch
(``common.teacher_on_clean_images``; Mean Teacher's PyTorch code, like ICT's, averages
only the parameters). The factory asks for two unlabeled views.
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    device_key,
    labeled_and_consistency_gradients,
    ramped_weight,
    teacher_on_clean_images,
)
from meta_semi_jax.state import TrainState


def make(num_classes: int, *, weight: float, rampup_steps: int, teacher_bn_mode: str,
         noisy_network: bool, ema_warmup: bool) -> Algorithm:
    """Mean Teacher with maximum consistency weight ``weight``, ramped up over
    ``rampup_steps``, the EMA teacher's BatchNorm in ``teacher_bn_mode``; student and
    teacher draw independent network noise (``noisy_network``); ``ema_warmup`` as
    ``Algorithm``'s."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        k_student, k_teacher = jax.random.split(device_key(key, axis_name))
        views = batch.unlabeled_views()
        teacher = teacher_on_clean_images(state, views[1], batch.labeled_images,
                                          teacher_bn_mode, rng=k_teacher)
        return labeled_and_consistency_gradients(
            state, batch.labeled_images, jax.nn.one_hot(batch.labels, num_classes), views[0],
            lambda params, batch_stats: (jax.nn.softmax(teacher.logits), batch_stats),
            ramped_weight(state, weight, rampup_steps, "sigmoid"), axis_name, rng=k_student,
            ema_batch_stats=teacher.batch_stats)
    return Algorithm(gradients, unlabeled_views=2, noisy_network=noisy_network,
                     ema_warmup=ema_warmup)
