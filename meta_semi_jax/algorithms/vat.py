"""Virtual Adversarial Training with entropy minimisation, "VAT+EntMin" (Miyato et al.,
TPAMI 2018), the variant of their CNN-13 ("Conv-Large") results.

Loss: ``mean CE(f(x), y) + alpha * LDS + mean_u H(p(y|u))`` with
``LDS = mean_u KL(p(y|u) || p(y|u + r_adv))``, ``p(y|u)`` held constant (no gradient),
``H(p) = -sum_k p_k log p_k`` (gradient through ``p``), and the virtual adversarial
perturbation ``r_adv = epsilon * normalize(g)`` from one power iteration:
``g = grad_d sum_u KL(p(y|u) || p(y|u + d)) / B`` at ``d = xi * normalize(d0)``,
``d0 ~ N(0, I)``, no gradient through ``r_adv``. ``normalize`` is vat_tf's
``get_normalized_vector``, per example over all non-batch axes: ``d / (1e-12 + max|d|)``,
then ``/ sqrt(1e-6 + sum d^2)``. ``B`` is the global unlabeled batch, and ``d0`` is
``jax.random.normal(key, (B,) + image_shape, images.dtype)`` from the step's ``key``, of
which each device takes its rows: ``r_adv`` does not depend on the device count (with
synchronised BatchNorm the backward pass sums the other devices' terms, and the
per-example normalisation takes out the ``1 / B``).

How ``g`` is computed: to first order in ``xi``, ``g = xi * J^T F J n / B`` with ``n``
the normalised ``d0``, ``J`` the Jacobian of the logits w.r.t. the whole unlabeled batch
in train mode and ``F = diag(q) - q q^T`` at ``q = p(y|u)`` (the KL's Hessian at
``d = 0``). It differs from the gradient at ``xi * n`` by a relative ``O(xi) = 1e-6``,
below float32's resolution, and costs about one forward pass more (``jax.linearize``
and its transpose). The literal finite difference does not survive rounding: a unit-norm
``1e-6`` step moves each pixel of a 32x32x3 image by ~2e-8, under half a float32 ulp
of any value above 0.5 (three quarters of a standardised image's pixels do not move),
and the logits' change is below their own rounding (on CNN-13 at initialisation, in
float32 on CPU, its direction is nearly uncorrelated with ``J^T F J n``). With TF32
convolutions (JAX's default for float32 on Ampere/Hopper GPUs) or a bfloat16 model only
pixels at or near zero (translation padding) keep it. ``xi`` scales ``g`` as in vat_tf,
so the small constants of ``normalize`` act as there.

BatchNorm, as vat_tf (``train_semisup.py``, ``vat.py``): every pass normalises with its
own batch's statistics (train mode), labeled and unlabeled images in separate passes.
Only the labeled pass updates the running statistics (``vat.forward(x)``); the clean
unlabeled pass and the perturbed ones (power iteration, ``u + r_adv``) run with
``update_batch_stats=False``, so their statistics are discarded here.

Recipe (``config.vat.epsilon`` / ``.alpha``): ``alpha = 1`` (vat_tf adds the VAT loss
and the entropy with weight 1, ``train_semisup.py``); ``xi = 1e-6`` and one power
iteration (vat_tf's ``vat.py`` flags). ``epsilon``, the L2 norm of ``r_adv`` per image:
vat_tf's commands with augmentation (its README) use 8.0 on CIFAR-10 (10.0 without
augmentation) and 3.5 on SVHN (2.5 without), CIFAR-10 on ZCA-whitened images, SVHN on
pixels scaled to ``[-0.5, 0.5]``. Our inputs are standardised per channel instead: for
CIFAR-10 the overall scale is similar (about unit variance per pixel), but the ball is
round in pixel space rather than in ZCA space (which allows larger low-frequency and
smaller high-frequency changes); on SVHN one vat_tf unit is about 5 of ours
(1 / the channel std of ~0.2). vat_tf's Conv-Large also has dropout (0.5 after each
max-pool, the same masks in a step's clean and perturbed passes); CNN-13 runs without
it here (Appendix C), as for ICT.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    forward_train,
    global_mean,
    gradients_of,
    psum_if,
)
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.parallel import axis_size, local_shard
from meta_semi_jax.state import TrainState

XI = 1e-6  # vat_tf's ``xi``: the power iteration's finite-difference step


def normalize(d: jax.Array) -> jax.Array:
    """vat_tf's ``get_normalized_vector``: each example scaled to unit L2 norm over its
    non-batch axes, after dividing by its largest magnitude (small constants included:
    an all-zero example stays zero)."""
    axes = tuple(range(1, d.ndim))
    d = d / (1e-12 + jnp.max(jnp.abs(d), axis=axes, keepdims=True))
    return d / jnp.sqrt(1e-6 + jnp.sum(jnp.square(d), axis=axes, keepdims=True))


def kl_divergence(q_logits: jax.Array, p_logits: jax.Array) -> jax.Array:
    """``KL(softmax(q_logits) || softmax(p_logits))`` per example, ``[B]``."""
    log_q = jax.nn.log_softmax(q_logits)
    return jnp.sum(jnp.exp(log_q) * (log_q - jax.nn.log_softmax(p_logits)), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
    """``H(softmax(logits))`` per example, ``[B]``."""
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def random_direction(key: jax.Array, images: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's rows of ``d0 ~ N(0, I)`` drawn for the global batch from ``key``."""
    global_shape = (images.shape[0] * axis_size(axis_name),) + images.shape[1:]
    return local_shard(jax.random.normal(key, global_shape, images.dtype), axis_name)


def virtual_adversarial_perturbation(state: TrainState, params: Any, images: jax.Array,
                                     key: jax.Array, epsilon: float,
                                     axis_name: str | None) -> jax.Array:
    """``r_adv = epsilon * normalize(g)`` for this device's ``images`` (no gradient):
    ``g = xi * J^T F J n / B``, the power iteration's gradient at ``xi * n`` to first
    order (module docstring). The pass's BatchNorm statistics are discarded."""
    params = jax.lax.stop_gradient(params)
    n = normalize(random_direction(key, images, axis_name))

    def logits_of(inputs: jax.Array) -> jax.Array:
        return forward_train(state, params, inputs)[0]

    logits, jvp_fn = jax.linearize(logits_of, images)
    q = jax.nn.softmax(logits)
    j_d = jvp_fn(XI * n)  # J (xi n), [B, C]
    f_j_d = q * (j_d - jnp.sum(q * j_d, axis=-1, keepdims=True))  # F J (xi n)
    global_count = images.shape[0] * axis_size(axis_name)
    (g,) = jax.linear_transpose(jvp_fn, images)(f_j_d / global_count)
    return jax.lax.stop_gradient(epsilon * normalize(g))


def make(num_classes: int, *, epsilon: float, alpha: float) -> Algorithm:
    """VAT+EntMin with perturbation norm ``epsilon`` and LDS weight ``alpha``.

    Metrics: ``loss``, ``labeled_loss`` (mean CE on the labeled batch), ``vat_loss``
    (LDS, unweighted) and ``entropy`` (mean entropy of the unlabeled predictions).
    """
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        unlabeled = batch.unlabeled_images
        r_adv = virtual_adversarial_perturbation(state, state.params, unlabeled, key,
                                                 epsilon, axis_name)

        def objective(params: Any):
            logits_x, batch_stats = forward_train(state, params, batch.labeled_images)
            supervised = global_mean(soft_cross_entropy(
                logits_x, jax.nn.one_hot(batch.labels, num_classes)), axis_name)
            # The unlabeled passes leave the running statistics alone (vat_tf).
            logits_u, _ = forward_train(state, params, unlabeled)
            logits_adv, _ = forward_train(state, params, unlabeled + r_adv)
            lds = global_mean(kl_divergence(jax.lax.stop_gradient(logits_u), logits_adv),
                              axis_name)
            ent = global_mean(entropy(logits_u), axis_name)
            return supervised + alpha * lds + ent, (batch_stats, (supervised, lds, ent))

        def metrics(aux):
            supervised, lds, ent = aux
            return {"labeled_loss": psum_if(supervised, axis_name),
                    "vat_loss": psum_if(lds, axis_name),
                    "entropy": psum_if(ent, axis_name)}

        return gradients_of(objective, state, metrics, axis_name)
    return Algorithm(gradients)
