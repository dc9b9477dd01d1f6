"""The Pi-model (Laine & Aila, 2017): predictions on two random augmentations of each
unlabeled image should agree.

Loss: ``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f(aug2(u))||^2 / C``
with the gradient through both branches, as in the original. Recipe (Laine & Aila):
``w(t)`` ramps up with ``exp(-5 (1 - t/T)^2)`` over the first 80 epochs to
``w_max = 100 * num_labels / num_train_images`` (their scaling of the weight by the
labeled fraction), ``config.pi_model.weight`` / ``.rampup_steps``. The two views come
from ``batch.unlabeled_views()`` (the factory asks for two). Laine & Aila's network
has Gaussian input noise (0.15) and dropout (0.5), which its recipe keeps
(``config.pi_model.noisy_network``, ``models/noise.py``).
"""
from __future__ import annotations

import jax

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    device_key,
    forward_train,
    labeled_and_consistency_gradients,
    ramped_weight,
)
from meta_semi_jax.state import TrainState


def make(num_classes: int, *, weight: float, rampup_steps: int,
         noisy_network: bool) -> Algorithm:
    """The Pi-model with maximum consistency weight ``weight``, ramped up over
    ``rampup_steps``; it reads two unlabeled views, and with ``noisy_network`` the two
    passes draw independent input noise and dropout (``key``'s halves)."""
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        k_first, k_second = jax.random.split(device_key(key, axis_name))
        views = batch.unlabeled_views()

        def second_view_predictions(params, batch_stats):
            logits, batch_stats = forward_train(state, params, views[1], batch_stats,
                                                rng=k_second)
            return jax.nn.softmax(logits), batch_stats

        return labeled_and_consistency_gradients(
            state, batch.labeled_images, jax.nn.one_hot(batch.labels, num_classes), views[0],
            second_view_predictions, ramped_weight(state, weight, rampup_steps, "sigmoid"),
            axis_name, rng=k_first)
    return Algorithm(gradients, unlabeled_views=2, noisy_network=noisy_network)
