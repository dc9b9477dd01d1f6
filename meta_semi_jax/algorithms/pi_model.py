"""The Pi-model (Laine & Aila, 2017): predictions on two random augmentations of each
unlabeled image should agree.

Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f(aug2(u))||^2 / C``
with the gradient through both branches, as in the original. Recipe (Laine & Aila):
``w(t)`` ramps up with ``exp(-5 (1 - t/T)^2)`` over the first 80 epochs to
``w_max = 100 * num_labels / num_train_images`` (their scaling of the weight by the
labeled fraction), ``config.pi_model.weight`` / ``.rampup_steps``. The two views come
from ``batch.extra_unlabeled_views`` (``unlabeled_views=2``); CNN-13 has no dropout
here (Appendix C), so augmentation is the only noise.
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Gradients,
    HParams,
    SSLBatch,
    forward_train,
    labeled_and_consistency_gradients,
    unlabeled_loss_weight,
)
from meta_semi_jax.state import TrainState


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None) -> Gradients:
    """Global gradients of the Pi-model loss on one batch with two unlabeled views."""
    del key
    views = batch.unlabeled_views()

    def second_view_predictions(params, batch_stats):
        logits, batch_stats = forward_train(state, params, views[1], batch_stats)
        return jax.nn.softmax(logits), batch_stats

    return labeled_and_consistency_gradients(
        state, batch.labeled_images, jax.nn.one_hot(batch.labels, hparams.num_classes),
        views[0], second_view_predictions, unlabeled_loss_weight(state, hparams, "sigmoid"),
        axis_name)
