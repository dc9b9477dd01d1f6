"""Meta-Semi (Algorithm 1): pseudo-label, MixUp, meta-reweight, update.

1. Soft pseudo labels of U from the EMA model (Sec. 3.3).
2. ``X~ = MixUp(X, Shuffle(X))``, ``U~ = MixUp(Concat(X, U), Shuffle(...))`` (Eqs. 12-13).
3. Meta scores ``s_j`` of every example of U~ against the labeled gradient (Eq. 10).
4. 0-1 weights ``w_j = [s_j >= 0]`` (Eq. 9).
5. Gradient of ``L_meta = sum_j w_j L_j / sum_j w_j`` (Eq. 1) with the weights held fixed.

Table 5's ablations are ``HParams`` switches, each changing only what it names:
``ema_decay=0`` (no parameter EMA: the pseudo labels, and the evaluated model, are the
model's own), ``pseudo_label='one_hot'`` (argmax of step 1), ``mixup`` in ``unlabeled``
/ ``labeled`` / ``none`` (which of the two MixUps of step 2 happen), ``weights`` in
``ones`` / ``sign`` (step 4 gives 1 / +-1 instead of Eq. 9). ``weights='l2rw'`` is the
Learning to Reweight baseline (``l2rw.py``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from meta_semi_jax.algorithms.common import (
    Gradients,
    HParams,
    SSLBatch,
    forward_train,
    per_example_loss_fn,
    pmean_if,
    pseudo_label_diagnostics,
    pseudo_labels,
    psum_if,
)
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.sampler import SamplerSpec, sample_batch
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import (
    l2rw_weights,
    labeled_gradient,
    loss_coefficients,
    meta_weights,
    score_unlabeled,
)
from meta_semi_jax.mixup import Mixed, mixup_labeled_and_unlabeled
from meta_semi_jax.parallel import AXIS, gather_global, local_shard
from meta_semi_jax.state import TrainState

PSEUDO_LABELS: tuple[str, ...] = ("soft", "one_hot")
MIXUP_MODES: tuple[str, ...] = ("both", "unlabeled", "labeled", "none")

# rule(scores, axis_name) -> weights of U~'s examples (constants of the update)
WEIGHT_RULES: dict[str, Callable[[jax.Array, str | None], jax.Array]] = {
    "meta": lambda scores, axis_name: meta_weights(scores),
    "ones": lambda scores, axis_name: jnp.ones_like(scores),
    "sign": lambda scores, axis_name: jnp.where(scores >= 0, 1.0, -1.0).astype(scores.dtype),
    "l2rw": l2rw_weights,
}

# A term added to L_meta (Eq. 14):
# (params, batch_stats, key, pseudo labels of U) -> (device share, batch_stats).
ExtraLoss = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def pseudo_targets(state: TrainState, images: jax.Array, hparams: HParams) -> jax.Array:
    """The targets of U: the EMA model's soft predictions (Sec. 3.3), or their argmax
    as one-hot vectors (``pseudo_label='one_hot'``)."""
    soft = pseudo_labels(state, images, hparams.teacher_bn_mode)
    if hparams.pseudo_label == "one_hot":
        return jax.nn.one_hot(jnp.argmax(soft, -1), soft.shape[-1], dtype=soft.dtype)
    return soft


def mixed_batches(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
                  axis_name: str | None = None) -> tuple[Mixed, Mixed, jax.Array]:
    """This device's X~ and U~ (Eqs. 12-13) and the pseudo labels of its U (Sec. 3.3).

    MixUp partners are drawn from the global batch, so the step does not depend on how
    many devices share it; each device then keeps its slice of X~ and U~.
    """
    one_hot = jax.nn.one_hot(batch.labels, hparams.num_classes)
    targets_u = pseudo_targets(state, batch.unlabeled_images, hparams)
    global_inputs: tuple[jax.Array, jax.Array, jax.Array, jax.Array] = gather_global(
        (batch.labeled_images, one_hot, batch.unlabeled_images, targets_u), axis_name)
    mixed_x, mixed_u = local_shard(mixup_labeled_and_unlabeled(
        key, *global_inputs, hparams.beta, mix_labeled=hparams.mixup in ("both", "labeled"),
        mix_unlabeled=hparams.mixup in ("both", "unlabeled")), axis_name)
    return mixed_x, mixed_u, targets_u


def assumption_terms(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
                     axis_name: str | None = None) -> tuple[jax.Array, Any]:
    """For one sample of (X~, U~): ``||grad L_meta||^2`` and ``grad G(X~)`` with
    ``G = sum_i L(y~_i, p(x~_i))`` (Eq. 15), the two sides of Assumption 1."""
    meta_grads = gradients(state, batch, key, hparams, axis_name).grads
    mixed_x, _, _ = mixed_batches(state, batch, key, hparams, axis_name)
    g_labeled = labeled_gradient(per_example_loss_fn(state), state.params, tuple(mixed_x),
                                 axis_name)
    return optax.tree.norm(meta_grads, squared=True), g_labeled


def labeled_direction(state: TrainState, mixed_x: Mixed,
                      axis_name: str | None = None) -> tuple[jax.Array, Any]:
    """This device's ``sum_i L(x~_i)`` and the global ``g_X`` of Eq. (10), in float32 also
    when the model computes in bfloat16 (``state.float32_apply_fn``): every score is
    measured along ``g_X``, so its rounding error would reach all of them at once
    (experiments/PERF.md measures the signs it flips). X~ is the smallest batch of the
    step, so this costs little."""
    loss_fn = per_example_loss_fn(state, float32=True)
    labeled_sum, g_x = jax.value_and_grad(
        lambda params: jnp.sum(loss_fn(params, (mixed_x.inputs, mixed_x.targets))))(state.params)
    return labeled_sum, psum_if(g_x, axis_name)


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, hparams: HParams,
              axis_name: str | None = None, extra_loss: ExtraLoss | None = None) -> Gradients:
    """Global gradient of Eq. (1) (plus ``extra_loss``, Eq. 14) for one Meta-Semi step.

    ``key`` must be the same on every device of ``axis_name``. With ``meta_grad='jvp'``
    the forward pass of U~ is shared by the scores and the update
    (``meta.score_unlabeled``); the other methods add one.

    Metrics: ``loss`` (the global objective), ``selected`` (share of U~ with a positive
    weight), ``labeled_loss`` (mean loss on X~), ``mean_score``, and with
    ``batch.hidden_labels`` the pseudo-label accuracies of ``pseudo_label_diagnostics``.
    """
    mixed_x, mixed_u, targets_u = mixed_batches(state, batch, key, hparams, axis_name)
    labeled_sum, g_x = labeled_direction(state, mixed_x, axis_name)

    def losses_and_stats(params, mixed):
        logits, batch_stats = forward_train(state, params, mixed[0])
        return soft_cross_entropy(logits, mixed[1]), batch_stats

    scored = score_unlabeled(hparams.meta_grad, losses_and_stats, state.params,
                             tuple(mixed_x), tuple(mixed_u), g_x, axis_name=axis_name)
    scores, batch_stats = scored.scores, scored.aux
    coefficients = loss_coefficients(WEIGHT_RULES[hparams.weights](scores, axis_name), axis_name)
    loss, grads = jnp.sum(coefficients * scored.losses), scored.pullback(coefficients)
    if extra_loss is not None:
        (extra, batch_stats), extra_grads = jax.value_and_grad(extra_loss, has_aux=True)(
            state.params, batch_stats, jax.random.fold_in(key, 1), targets_u)
        loss, grads = loss + extra, jax.tree.map(jnp.add, grads, extra_grads)

    selected = (coefficients > 0).astype(jnp.float32)
    metrics = {"loss": psum_if(loss, axis_name),
               "selected": pmean_if(jnp.mean(selected), axis_name),
               "labeled_loss": pmean_if(labeled_sum / batch.labels.shape[0], axis_name),
               "mean_score": pmean_if(jnp.mean(scores), axis_name)}
    if batch.hidden_labels is not None:
        metrics.update(pseudo_label_diagnostics(
            lax.stop_gradient(targets_u), batch.hidden_labels, batch.labels.shape[0],
            selected, axis_name))
    return Gradients(psum_if(grads, axis_name), pmean_if(batch_stats, axis_name), metrics)


ASSUMPTION_STREAM = 0x5EED  # separates the ratio's random batches from the training ones


def device_assumption_ratio(state: TrainState, data: DeviceData, key: jax.Array, *,
                            sampler: SamplerSpec, hparams: HParams,
                            num_samples: int) -> dict[str, jax.Array]:
    """Monte-Carlo estimate of the ratio of Assumption 1 (paper Fig. 2),
    ``E ||grad L_meta||^2 / ||grad E G(X~)||^2``, over ``num_samples`` random batches
    drawn as ``sampler`` says with the run's ``key`` and the current step (not the
    training batches'). A per-device program over ``AXIS``, like the training step."""
    key = jax.random.fold_in(jax.random.fold_in(key, state.step), ASSUMPTION_STREAM)

    def accumulate(carry, index):
        k_data, k_step = jax.random.split(jax.random.fold_in(key, index))
        batch = sample_batch(data, k_data, jnp.int32(0), sampler, axis_name=AXIS)
        squared, g_labeled = assumption_terms(state, batch, k_step, hparams, AXIS)
        return (carry[0] + squared, jax.tree.map(jnp.add, carry[1], g_labeled)), None

    zeros = (jnp.float32(0.0), jax.tree.map(jnp.zeros_like, state.params))
    (squared_sum, g_sum), _ = jax.lax.scan(accumulate, zeros, jnp.arange(num_samples))
    mean_g = jax.tree.map(lambda g: g / num_samples, g_sum)
    return {"assumption_ratio": squared_sum / num_samples
            / optax.tree.norm(mean_g, squared=True)}
