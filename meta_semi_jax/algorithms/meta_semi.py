"""Meta-Semi (Algorithm 1): pseudo-label, MixUp, meta-reweight, update.

1. Soft pseudo labels of U from the EMA model (Sec. 3.3).
2. ``X~ = MixUp(X, Shuffle(X))``, ``U~ = MixUp(Concat(X, U), Shuffle(...))`` (Eqs. 12-13).
3. Meta scores ``s_j`` of every example of U~ against the labeled gradient (Eq. 10).
4. 0-1 weights ``w_j = [s_j >= 0]`` (Eq. 9).
5. Gradient of ``L_meta = sum_j w_j L_j / sum_j w_j`` (Eq. 1) with the weights held fixed.

Table 5's ablations are arguments of ``make``, each changing only what it names:
``pseudo_label='one_hot'`` (argmax of step 1), ``mixup`` in ``unlabeled`` / ``labeled``
/ ``none`` (which of the two MixUps of step 2 happen), ``weights`` in ``ones`` /
``sign`` (step 4 gives 1 / +-1 instead of Eq. 9); the EMA's (``ema_decay=0``: the
pseudo labels, and the evaluated model, are the model's own) is the step's
``ema_decay``. ``reweighting`` builds the method with another weight rule or an extra
loss: Learning to Reweight (``l2rw.py``) and Meta-Semi + ICT (``meta_semi_ict.py``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from meta_semi_jax.algorithms.common import (
    COUNT_PREFIX,
    Algorithm,
    Gradients,
    SSLBatch,
    Teacher,
    UnmixedScores,
    at_least_float32,
    forward_train,
    forward_with_features,
    per_example_loss_fn,
    per_example_losses_and_stats,
    pmean_if,
    pseudo_label_diagnostics,
    psum_if,
    teacher_on_clean_images,
)
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import (
    MetaGradMethod,
    Scored,
    labeled_gradient,
    last_layer_scores,
    loss_coefficients,
    meta_weights,
    score_unlabeled,
)
from meta_semi_jax.mixup import (
    Mixed,
    Shuffle,
    labeled_and_unlabeled_shuffles,
    mix_labeled_and_unlabeled,
)
from meta_semi_jax.parallel import axis_size, gather_global, local_shard
from meta_semi_jax.state import TrainState

PSEUDO_LABELS: tuple[str, ...] = ("soft", "one_hot")
MIXUP_MODES: tuple[str, ...] = ("both", "unlabeled", "labeled", "none")

# rule(scores, axis_name) -> weights of U~'s examples (constants of the update)
WeightRule = Callable[[jax.Array, "str | None"], jax.Array]
# Eq. (9) and Table 5's two ablations of it.
WEIGHT_RULES: dict[str, WeightRule] = {
    "meta": lambda scores, axis_name: meta_weights(scores),
    "ones": lambda scores, axis_name: jnp.ones_like(scores),
    "sign": lambda scores, axis_name: jnp.where(scores >= 0, 1.0, -1.0).astype(scores.dtype),
}

# A term added to L_meta (Eq. 14): (params, batch_stats, key) -> (device share, batch_stats).
ExtraLoss = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
# (state, batch, the teacher's logits on U, axis_name) -> the step's ExtraLoss
ExtraLossOfStep = Callable[[TrainState, SSLBatch, jax.Array, "str | None"], ExtraLoss]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What Meta-Semi's steps 1-3 need. beta: Beta(beta, beta) of MixUp (Eqs. 12-13).
    meta_grad: how the scores are computed (``meta.META_GRAD_METHODS``).
    teacher_bn_mode: ``"train"`` normalises the EMA teacher with the unlabeled batch's
    statistics when it makes pseudo labels (ICT's code does this), ``"eval"`` with its
    running averages. pseudo_label, mixup: Table 5's switches (module docstring).
    log_selection_agreement: with a cheaper ``meta_grad``, also compute the exact
    (``jvp``) scores and log the share of U~ whose Eq. (9) weight they agree on."""
    num_classes: int
    beta: float
    meta_grad: MetaGradMethod = "jvp"
    teacher_bn_mode: str = "train"
    pseudo_label: str = "soft"
    mixup: str = "both"
    log_selection_agreement: bool = False


def make(num_classes: int, *, beta: float, meta_grad: MetaGradMethod = "jvp",
         teacher_bn_mode: str = "train", pseudo_label: str = "soft", mixup: str = "both",
         weights: str = "meta", log_selection_agreement: bool = False) -> Algorithm:
    """Meta-Semi; the defaults of the switches are the full method (``Settings`` says
    what each argument does; ``weights`` picks a rule of ``WEIGHT_RULES``). It also
    offers the two sides of Assumption 1 for the ``log_assumption_ratio`` diagnostic."""
    settings = Settings(num_classes, beta, meta_grad, teacher_bn_mode, pseudo_label, mixup,
                        log_selection_agreement)
    rule = WEIGHT_RULES[weights]

    def terms(state: TrainState, batch: SSLBatch, key: jax.Array,
              axis_name: str | None = None) -> tuple[jax.Array, Any]:
        return assumption_terms(state, batch, key, settings, rule, axis_name)
    return reweighting(settings, rule)._replace(assumption_terms=terms)


def reweighting(settings: Settings, weight_rule: WeightRule,
                extra_loss: ExtraLossOfStep | None = None) -> Algorithm:
    """Meta-Semi's steps 1-3 followed by ``weight_rule`` in place of step 4, and
    ``extra_loss`` (Eq. 14) added to ``L_meta`` where given."""
    def step_gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                       axis_name: str | None = None) -> Gradients:
        return gradients(state, batch, key, settings, weight_rule, axis_name, extra_loss)
    return Algorithm(step_gradients, unmixed_scores=teacher_and_unmixed_scores(settings))


def teacher(state: TrainState, batch: SSLBatch, settings: Settings) -> Teacher:
    """The EMA teacher on the step's clean batch: its logits on U and its own BatchNorm
    statistics (``common.teacher_on_clean_images``)."""
    return teacher_on_clean_images(state, batch.unlabeled_images, batch.labeled_images,
                                   settings.teacher_bn_mode)


def pseudo_targets(teacher_logits: jax.Array, settings: Settings) -> jax.Array:
    """The targets of U: the EMA model's soft predictions (Sec. 3.3), or their argmax
    as one-hot vectors (``pseudo_label='one_hot'``)."""
    soft = jax.nn.softmax(teacher_logits)
    if settings.pseudo_label == "one_hot":
        return jax.nn.one_hot(jnp.argmax(soft, -1), soft.shape[-1], dtype=soft.dtype)
    return soft


def shuffles(batch: SSLBatch, key: jax.Array, settings: Settings,
             axis_name: str | None = None) -> tuple[Shuffle, Shuffle]:
    """The coefficients and partners of X~ and U~ (Eqs. 12-13) over the global batch,
    as ``mixed_batches`` draws them from ``key``."""
    devices = axis_size(axis_name)
    return labeled_and_unlabeled_shuffles(
        key, batch.labels.shape[0] * devices, batch.unlabeled_images.shape[0] * devices,
        settings.beta, mix_labeled=settings.mixup in ("both", "labeled"),
        mix_unlabeled=settings.mixup in ("both", "unlabeled"))


def mixed_batches(batch: SSLBatch, key: jax.Array, settings: Settings, targets_u: jax.Array,
                  axis_name: str | None = None) -> tuple[Mixed, Mixed]:
    """This device's X~ and U~ (Eqs. 12-13), U carrying its pseudo labels ``targets_u``
    (Sec. 3.3, ``pseudo_targets``).

    MixUp partners are drawn from the global batch, so the step does not depend on how
    many devices share it; each device then keeps its slice of X~ and U~.
    """
    one_hot = jax.nn.one_hot(batch.labels, settings.num_classes)
    global_inputs: tuple[jax.Array, jax.Array, jax.Array, jax.Array] = gather_global(
        (batch.labeled_images, one_hot, batch.unlabeled_images, targets_u), axis_name)
    mixed_x, mixed_u = local_shard(mix_labeled_and_unlabeled(
        shuffles(batch, key, settings, axis_name), *global_inputs), axis_name)
    return mixed_x, mixed_u


def scored_mix(state: TrainState, batch: SSLBatch, key: jax.Array, settings: Settings,
               targets_u: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, Scored]:
    """Steps 2-3: X~ and U~ of ``mixed_batches`` and Eq. (10)'s scores of U~ against
    X~'s ``g_X`` (``labeled_direction``), with U~'s losses and their pullback
    (``meta.score_unlabeled``, or ``last_layer_scored``). Returns this device's sum of
    X~'s losses and the ``Scored`` of its share of U~."""
    mixed_x, mixed_u = mixed_batches(batch, key, settings, targets_u, axis_name)
    if settings.meta_grad == "last_layer":
        return last_layer_scored(state, mixed_x, mixed_u, axis_name)
    labeled_sum, g_x = labeled_direction(state, mixed_x, axis_name)
    return labeled_sum, score_unlabeled(
        settings.meta_grad, per_example_losses_and_stats(state), state.params, tuple(mixed_x),
        tuple(mixed_u), g_x, axis_name=axis_name)


def last_layer_scored(state: TrainState, mixed_x: Mixed, mixed_u: Mixed,
                      axis_name: str | None = None) -> tuple[jax.Array, Scored]:
    """Step 3 with ``meta_grad='last_layer'`` (``meta.last_layer_scores``): a forward pass
    of X~ without a backward pass, and U~'s forward pass, whose logits and penultimate
    features give the scores and whose pullback gives the update. Returns what
    ``scored_mix`` returns."""
    logits_x, features_x, _ = forward_with_features(state, state.params, mixed_x.inputs)
    labeled_sum = jnp.sum(soft_cross_entropy(logits_x, mixed_x.targets))

    def unlabeled(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
        logits, features, batch_stats = forward_with_features(state, params, mixed_u.inputs)
        return soft_cross_entropy(logits, mixed_u.targets), (batch_stats, logits, features)

    losses, pullback, (batch_stats, logits_u, features_u) = jax.vjp(
        unlabeled, state.params, has_aux=True)
    scores = last_layer_scores(at_least_float32(logits_u), mixed_u.targets, features_u,
                               at_least_float32(logits_x), mixed_x.targets, features_x,
                               axis_name)
    return labeled_sum, Scored(losses, lax.stop_gradient(scores),
                               lambda coefficients: pullback(coefficients)[0], batch_stats)


def selection_agreement(state: TrainState, batch: SSLBatch, key: jax.Array,
                        settings: Settings, targets_u: jax.Array, scores: jax.Array,
                        axis_name: str | None = None) -> dict[str, jax.Array]:
    """How many examples of U~ (global) get the same Eq. (9) weight ``[s_j >= 0]`` from
    ``scores`` as from the exact ``jvp`` scores of the same X~ and U~, as the counts
    ``count/selection_agreement_correct`` (agreeing) and ``..._known`` (all), which the
    training loop sums between evaluations (``selection.SelectionCounts``)."""
    exact = dataclasses.replace(settings, meta_grad="jvp")
    _, scored = scored_mix(state, batch, key, exact, targets_u, axis_name)
    agree = jnp.sum(meta_weights(scores) == meta_weights(scored.scores), dtype=jnp.int32)
    return {f"{COUNT_PREFIX}selection_agreement_correct": psum_if(agree, axis_name),
            f"{COUNT_PREFIX}selection_agreement_known": psum_if(
                jnp.asarray(scores.shape[0], jnp.int32), axis_name)}


def unmixed_scores(state: TrainState, batch: SSLBatch, settings: Settings,
                   targets_u: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Eq. (10)'s scores of U's examples, carrying ``targets_u``, with nothing mixed
    (lambda = 1 in Eqs. 12-13: ``X~ = X``, ``U~ = W = Concat(X, U)``, as
    ``mixup='none'``): the global ``[B_u]`` vector, U's part of W's scores."""
    unmixed = dataclasses.replace(settings, mixup="none")
    _, scored = scored_mix(state, batch, jax.random.PRNGKey(0), unmixed, targets_u, axis_name)
    num_labeled = batch.labels.shape[0] * axis_size(axis_name)
    return gather_global(scored.scores, axis_name)[num_labeled:]


def student_probabilities(state: TrainState, batch: SSLBatch,
                          axis_name: str | None = None) -> jax.Array:
    """The model's train-mode predictions on U, ``[B_u, K]`` over the global U, from a
    forward pass over ``W = Concat(X, U)`` split over the devices as ``unmixed_scores``
    splits it (so with the same BatchNorm statistics)."""
    w = local_shard(jnp.concatenate(gather_global(
        (batch.labeled_images, batch.unlabeled_images), axis_name)), axis_name)
    logits, _ = forward_train(state, state.params, w)
    num_labeled = batch.labels.shape[0] * axis_size(axis_name)
    return gather_global(jax.nn.softmax(at_least_float32(logits)), axis_name)[num_labeled:]


def teacher_and_unmixed_scores(settings: Settings) -> UnmixedScores:
    """The ``Algorithm.unmixed_scores`` of the methods built on Meta-Semi's steps:
    ``unmixed_scores`` with the EMA teacher's pseudo labels (``teacher``,
    ``pseudo_targets``) as U's targets, the teacher's probabilities and the model's
    (``student_probabilities``)."""
    def scores_and_probabilities(state: TrainState, batch: SSLBatch, axis_name: str | None = None
                                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits = teacher(state, batch, settings).logits
        scores = unmixed_scores(state, batch, settings, pseudo_targets(logits, settings),
                                axis_name)
        return (scores, gather_global(jax.nn.softmax(logits), axis_name),
                student_probabilities(state, batch, axis_name))
    return scores_and_probabilities


def assumption_terms(state: TrainState, batch: SSLBatch, key: jax.Array, settings: Settings,
                     weight_rule: WeightRule,
                     axis_name: str | None = None) -> tuple[jax.Array, Any]:
    """For one sample of (X~, U~): ``||grad L_meta||^2`` and ``grad G(X~)`` with
    ``G = sum_i L(y~_i, p(x~_i))`` (Eq. 15), the two sides of Assumption 1."""
    meta_grads = gradients(state, batch, key, settings, weight_rule, axis_name).grads
    targets_u = pseudo_targets(teacher(state, batch, settings).logits, settings)
    mixed_x, _ = mixed_batches(batch, key, settings, targets_u, axis_name)
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


def gradients(state: TrainState, batch: SSLBatch, key: jax.Array, settings: Settings,
              weight_rule: WeightRule, axis_name: str | None = None,
              extra_loss: ExtraLossOfStep | None = None) -> Gradients:
    """Global gradient of Eq. (1) (plus ``extra_loss``, Eq. 14) for one Meta-Semi step,
    and the EMA teacher's BatchNorm statistics from its passes over the clean batch.

    ``key`` must be the same on every device of ``axis_name``. With ``meta_grad='jvp'``
    the forward pass of U~ is shared by the scores and the update
    (``meta.score_unlabeled``); the other methods add one.

    Metrics: ``loss`` (the global objective), ``selected`` (share of U~ with a positive
    weight), ``labeled_loss`` (mean loss on X~), ``mean_score``, and with
    ``batch.hidden_labels`` the counts of ``pseudo_label_diagnostics`` (``count/...``),
    each example of U~ credited to its dominant component, which the training loop
    sums between evaluations; with ``settings.log_selection_agreement``, the counts of
    ``selection_agreement``, logged at each evaluation as ``selection_agreement_accuracy``
    (% of U~'s examples whose selection the exact score shares).
    """
    clean = teacher(state, batch, settings)
    targets_u = pseudo_targets(clean.logits, settings)
    labeled_sum, scored = scored_mix(state, batch, key, settings, targets_u, axis_name)
    scores, batch_stats = scored.scores, scored.aux
    coefficients = loss_coefficients(weight_rule(scores, axis_name), axis_name)
    loss, grads = jnp.sum(coefficients * scored.losses), scored.pullback(coefficients)
    if extra_loss is not None:
        (extra, batch_stats), extra_grads = jax.value_and_grad(
            extra_loss(state, batch, clean.logits, axis_name), has_aux=True)(
            state.params, batch_stats, jax.random.fold_in(key, 1))
        loss, grads = loss + extra, jax.tree.map(jnp.add, grads, extra_grads)

    selected = (coefficients > 0).astype(jnp.float32)
    metrics = {"loss": psum_if(loss, axis_name),
               "selected": pmean_if(jnp.mean(selected), axis_name),
               "labeled_loss": pmean_if(labeled_sum / batch.labels.shape[0], axis_name),
               "mean_score": pmean_if(jnp.mean(scores), axis_name)}
    if settings.log_selection_agreement:
        metrics.update(selection_agreement(state, batch, key, settings, targets_u, scores,
                                           axis_name))
    if batch.hidden_labels is not None:
        dominant = local_shard(shuffles(batch, key, settings, axis_name)[1].dominant(),
                               axis_name)
        metrics.update(pseudo_label_diagnostics(
            lax.stop_gradient(targets_u), batch.hidden_labels, dominant, selected, axis_name))
    return Gradients(psum_if(grads, axis_name), pmean_if(batch_stats, axis_name), metrics,
                     pmean_if(clean.batch_stats, axis_name))
