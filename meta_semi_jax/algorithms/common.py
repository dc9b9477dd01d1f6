"""What every algorithm's gradient function takes and returns, and shared pieces."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from meta_semi_jax.batches import SSLBatch
from meta_semi_jax.losses import soft_cross_entropy, softmax_mse
from meta_semi_jax.mixup import Mixed, mixup_with_shuffle
from meta_semi_jax.models import RNG_STREAMS
from meta_semi_jax.optim import LRCycles
from meta_semi_jax.parallel import axis_index, axis_size, gather_global, local_shard
from meta_semi_jax.rampup import linear_rampup, sigmoid_rampup
from meta_semi_jax.state import TrainState, model_variables
from meta_semi_jax.weight_average import FastSWA


class Gradients(NamedTuple):
    """An algorithm's result on one device: global gradients, the BatchNorm statistics
    after the training forward pass, and scalar metrics already averaged over devices.
    ``ema_batch_stats``: the EMA teacher's running statistics after its own passes over
    the step's clean images (``Teacher``), for algorithms that run one; None leaves the
    evaluated EMA model with the EMA of the student's statistics. ``algorithm_state``:
    the new ``TrainState.algorithm_state`` (None: unchanged)."""
    grads: Any
    batch_stats: Any
    metrics: dict[str, jax.Array]
    ema_batch_stats: Any = None
    algorithm_state: Any = None


# (state, batch, key, axis_name) -> Gradients; ``key`` is equal on every device.
GradientFn = Callable[[TrainState, SSLBatch, jax.Array, "str | None"], Gradients]
# (state, batch, key, axis_name) -> (||grad L_meta||^2, grad G(X~)): Assumption 1's sides.
AssumptionTerms = Callable[[TrainState, SSLBatch, jax.Array, "str | None"], tuple[jax.Array, Any]]
# (state, batch, axis_name) -> (Eq. 10's scores of U's examples with nothing mixed, the EMA
# teacher's probabilities on U, the model's), over the global U: ``[B_u]``, ``[B_u, K]``.
UnmixedScores = Callable[[TrainState, SSLBatch, "str | None"],
                         tuple[jax.Array, jax.Array, jax.Array]]


class Algorithm(NamedTuple):
    """An algorithm as the step sees it, made by its module's ``make`` factory (like
    optax's transformations) with its own settings closed over.

    gradients: ``(state, batch, key, axis_name) -> Gradients``.
    unlabeled_views: augmented views of each unlabeled image it reads from the batch
    (``SSLBatch.unlabeled_views``); the sampler draws that many.
    assumption_terms: the two sides of Assumption 1 for one batch, for the
    ``log_assumption_ratio`` diagnostic; None where the assumption is not about it.
    noisy_network: the model runs with the input noise and dropout of the Pi-model's
    and Mean Teacher's CNN-13 (``models.create_model(noisy=True)``); its train-mode
    passes then draw from ``network_rngs``.
    ema_warmup: the EMA's decay ramps up as ``ema.ema_decay_at`` (ICT's, Meta-Semi's);
    False keeps it at its maximum from the first step (Mean Teacher's CIFAR-10 recipe).
    init_state: ``(pool_size, params) -> the initial TrainState.algorithm_state`` for
    algorithms that keep state on the devices from step to step: values per unlabeled
    example (they read ``SSLBatch.unlabeled_ids`` and return the new state in
    ``Gradients.algorithm_state``) or a weight average; None for the others.
    unmixed_scores: the meta scores of a batch's unlabeled examples against its labeled
    batch with nothing mixed, for the selection diagnostics (``selection.py``); None for
    the methods without meta scores.
    lr_cycles: the learning-rate cycles the algorithm trains with
    (``optim.learning_rate_schedule``); None: the config's ``lr_schedule``.
    weight_average: fast-SWA's average of the student's weights, updated after each
    step (``step.train_step``) in ``TrainState.algorithm_state`` and evaluated in place
    of the EMA model (``build.Training.evaluated``); None: the EMA model is evaluated.
    """
    gradients: GradientFn
    unlabeled_views: int = 1
    assumption_terms: AssumptionTerms | None = None
    noisy_network: bool = False
    ema_warmup: bool = True
    init_state: Callable[[int, Any], Any] | None = None
    unmixed_scores: UnmixedScores | None = None
    lr_cycles: LRCycles | None = None
    weight_average: FastSWA | None = None


def pmean_if(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def psum_if(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.psum(tree, axis_name)


def device_key(key: jax.Array, axis_name: str | None) -> jax.Array:
    """``key`` (equal on every device) made this device's own, for draws per local example
    such as network noise: devices then draw independently, so a noisy run's draws (not
    their distribution) depend on the device count."""
    return jax.random.fold_in(key, axis_index(axis_name))


def network_rngs(key: jax.Array | None) -> dict[str, jax.Array] | None:
    """One key per random stream of a noisy network (``models.RNG_STREAMS``), or None."""
    if key is None:
        return None
    return {stream: jax.random.fold_in(key, i) for i, stream in enumerate(RNG_STREAMS)}


def forward_train(state: TrainState, params: Any, inputs: jax.Array, batch_stats: Any = None,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Logits in train mode (batch statistics) and the updated BatchNorm statistics.

    The running statistics start from ``batch_stats`` (default: the state's), so an
    algorithm with several forward passes per step updates them once per pass, in order.
    ``rng`` draws the network noise of a noisy model (unused by the others).
    """
    stats = state.batch_stats if batch_stats is None else batch_stats
    logits, updates = state.apply_fn(model_variables(params, stats), inputs,
                                     train=True, mutable=["batch_stats"],
                                     rngs=network_rngs(rng))
    return logits, updates.get("batch_stats", stats)


def forward_with_features(state: TrainState, params: Any, inputs: jax.Array,
                          rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, Any]:
    """``(logits, features, batch_stats)`` of a train-mode pass (``common.forward_train``'s,
    plus the features the model sows as ``intermediates/features``, at least float32)."""
    logits, updates = state.apply_fn(model_variables(params, state.batch_stats), inputs,
                                     train=True, mutable=["batch_stats", "intermediates"],
                                     rngs=network_rngs(rng))
    sown = updates.get("intermediates", {}).get("features")
    if sown is None:
        raise ValueError("this method needs a model that sows its penultimate features "
                         "(self.sow('intermediates', 'features', h)); see models/__init__.py")
    (features,) = sown
    return logits, at_least_float32(features), updates.get("batch_stats", state.batch_stats)


def global_mean(values: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's share of the mean of ``values`` over the global batch: the shares
    (and their gradients) add up over the devices to the global mean's."""
    return jnp.sum(values) / (values.shape[0] * axis_size(axis_name))


def mix_global(key: jax.Array, inputs: jax.Array, targets: jax.Array, lam: jax.Array,
               axis_name: str | None) -> Mixed:
    """This device's share of ``MixUp(B, Shuffle(B), lam)`` over the global batch ``B``:
    partners are drawn among all devices' examples (``key`` equal on every device), so
    the result does not depend on the device count."""
    global_inputs, global_targets = gather_global((inputs, targets), axis_name)
    return local_shard(mixup_with_shuffle(key, global_inputs, global_targets, lam), axis_name)


def ramped_weight(state: TrainState, weight: float, rampup_steps: int, ramp: str) -> jax.Array:
    """``weight`` (an unlabeled loss's maximum weight) times its ramp-up over
    ``rampup_steps`` (``"sigmoid"`` or ``"linear"``) at this step."""
    shape = sigmoid_rampup if ramp == "sigmoid" else linear_rampup
    return weight * shape(state.step, rampup_steps)


def gradients_of(objective: Callable[[Any], tuple[jax.Array, Any]], state: TrainState,
                 metrics: Callable[[Any], dict[str, jax.Array]],
                 axis_name: str | None, ema_batch_stats: Any = None,
                 algorithm_state: Callable[[Any], Any] | None = None) -> Gradients:
    """Global gradients of ``objective(params) -> (device share of the loss, (batch_stats,
    aux))``; ``metrics(aux)`` adds scalars to the global ``loss``; ``ema_batch_stats``
    as ``Gradients``'; ``algorithm_state(aux)`` gives the new algorithm state."""
    (loss, (batch_stats, aux)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    return Gradients(psum_if(grads, axis_name), pmean_if(batch_stats, axis_name),
                     {"loss": psum_if(loss, axis_name), **metrics(aux)},
                     pmean_if(ema_batch_stats, axis_name),
                     None if algorithm_state is None else algorithm_state(aux))


def per_example_losses_and_stats(state: TrainState, float32: bool = False
                                 ) -> Callable[[Any, tuple[jax.Array, jax.Array]],
                                               tuple[jax.Array, Any]]:
    """``fn(params, (inputs, soft_targets)) -> ([B] losses, batch_stats)`` in train mode:
    BatchNorm normalises with the batch's statistics, as in the training forward pass,
    and the statistics it would update come second. ``float32=True`` runs the model in
    float32 when the state has a lower-precision ``apply_fn`` (and a
    ``float32_apply_fn``)."""
    if float32 and state.float32_apply_fn is not None:
        state = state.replace(apply_fn=state.float32_apply_fn)

    def losses_and_stats(params: Any, batch: tuple[jax.Array, jax.Array]
                         ) -> tuple[jax.Array, Any]:
        inputs, targets = batch
        logits, batch_stats = forward_train(state, params, inputs)
        return soft_cross_entropy(logits, targets), batch_stats
    return losses_and_stats


def per_example_loss_fn(state: TrainState, float32: bool = False
                        ) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
    """``loss_fn(params, (inputs, soft_targets)) -> [B]`` in train mode, for ``meta_scores``:
    ``per_example_losses_and_stats`` with the statistics discarded (a step updates them
    once, in its training forward pass)."""
    losses_and_stats = per_example_losses_and_stats(state, float32)
    return lambda params, batch: losses_and_stats(params, batch)[0]


# Metrics whose name starts with this are int32 counts that the training loop sums over
# the steps between two evaluations (``selection.SelectionCounts``).
COUNT_PREFIX = "count/"


def pseudo_label_diagnostics(pseudo: jax.Array, hidden_labels: jax.Array,
                             sources: jax.Array, selected: jax.Array,
                             axis_name: str | None) -> dict[str, jax.Array]:
    """Counts behind the accuracy of the EMA pseudo labels on all unlabeled examples
    with a known label, and on the examples of U~ that Eq. (9) selected / rejected:
    ``count/<name>_correct`` and ``count/<name>_known`` for ``<name>`` in
    ``pseudo_label``, ``selected_pseudo_label``, ``rejected_pseudo_label``, global
    (summed over the devices of ``axis_name``) int32 scalars.

    ``pseudo`` ``[B_u]``: U's targets; ``hidden_labels`` ``[B_u]``: their true classes
    (-1 where unknown). ``sources`` ``[B_w]``: for each of this device's examples of
    ``U~ = MixUp(W, Shuffle(W))`` the index in the global ``W = Concat(X, U)`` of its
    dominant component (``mixup.Shuffle.dominant``); the example counts as selected
    (``selected > 0``) or rejected with the correctness of that component's pseudo label
    when it is an unlabeled example with a known label. With one coefficient per batch
    that credits every example of W exactly once. For analysis only: nothing here
    reaches a loss.
    """
    known = hidden_labels >= 0
    correct = (jnp.argmax(pseudo, -1) == hidden_labels) & known
    # Per example of the global W = Concat(X, U); labeled examples are not counted.
    global_correct, global_known = gather_global((correct, known), axis_name)
    pad = jnp.zeros(sources.shape[0] * axis_size(axis_name) - global_known.shape[0], bool)
    source_correct = jnp.concatenate([pad, global_correct])[sources]
    source_known = jnp.concatenate([pad, global_known])[sources]

    def count(mask: jax.Array) -> jax.Array:
        return psum_if(jnp.sum(mask, dtype=jnp.int32), axis_name)

    is_selected = selected > 0
    return {f"{COUNT_PREFIX}pseudo_label_correct": count(correct),
            f"{COUNT_PREFIX}pseudo_label_known": count(known),
            f"{COUNT_PREFIX}selected_pseudo_label_correct": count(source_correct & is_selected),
            f"{COUNT_PREFIX}selected_pseudo_label_known": count(source_known & is_selected),
            f"{COUNT_PREFIX}rejected_pseudo_label_correct": count(source_correct & ~is_selected),
            f"{COUNT_PREFIX}rejected_pseudo_label_known": count(source_known & ~is_selected)}


def teacher_logits(state: TrainState, images: jax.Array, teacher_bn_mode: str,
                   rng: jax.Array | None = None) -> jax.Array:
    """``f(u; theta_ema)``, the EMA teacher's logits, without gradient and at least in
    float32 (so that low-precision logits give well-formed probabilities). In train
    mode ``rng`` draws a noisy network's noise (Mean Teacher's teacher has its own)."""
    if teacher_bn_mode == "train":
        logits, _ = forward_train(state, state.ema_params, images, state.ema_batch_stats,
                                  rng)
    else:
        logits = state.apply_fn(model_variables(state.ema_params, state.ema_batch_stats),
                                images, train=False)
    return lax.stop_gradient(at_least_float32(logits))


class Teacher(NamedTuple):
    """The EMA teacher on a step's clean (augmented, not mixed) images."""
    logits: jax.Array      # on the unlabeled images, without gradient, at least float32
    batch_stats: Any       # its running statistics after train-mode passes over U, then X


def teacher_on_clean_images(state: TrainState, unlabeled_images: jax.Array,
                            labeled_images: jax.Array, teacher_bn_mode: str,
                            rng: jax.Array | None = None) -> Teacher:
    """The EMA teacher as ICT's code runs it: in train mode over the clean unlabeled and
    then the clean labeled batch, each pass updating the teacher's own running BatchNorm
    statistics (ICT averages only the parameters), which the evaluated EMA model then
    uses; its logits on U in ``teacher_bn_mode`` (train: that same pass). Statistics
    from clean images keep the variance the test images have, which mixed images, with
    their smaller activation variance, would not. ``rng`` draws a noisy network's noise.
    """
    k_u, k_x = (None, None) if rng is None else jax.random.split(rng)
    logits, stats = forward_train(state, state.ema_params, unlabeled_images,
                                  state.ema_batch_stats, k_u)
    _, stats = forward_train(state, state.ema_params, labeled_images, stats, k_x)
    if teacher_bn_mode != "train":
        return Teacher(teacher_logits(state, unlabeled_images, teacher_bn_mode),
                       lax.stop_gradient(stats))
    return Teacher(lax.stop_gradient(at_least_float32(logits)), lax.stop_gradient(stats))


def at_least_float32(logits: jax.Array) -> jax.Array:
    """Low-precision logits in float32, so that they give well-formed probabilities."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def pseudo_labels(state: TrainState, images: jax.Array, teacher_bn_mode: str,
                  rng: jax.Array | None = None) -> jax.Array:
    """``softmax(f(u; theta_ema))`` without gradient (Sec. 3.3, 'Pseudo labels')."""
    return jax.nn.softmax(teacher_logits(state, images, teacher_bn_mode, rng))


# (params, batch_stats) -> (targets of the unlabeled predictions, batch_stats)
ConsistencyTargets = Callable[[Any, Any], tuple[jax.Array, Any]]


def labeled_and_consistency_gradients(state: TrainState, labeled_images: jax.Array,
                                      labeled_targets: jax.Array,
                                      unlabeled_images: jax.Array,
                                      consistency_targets: ConsistencyTargets,
                                      weight: jax.Array, axis_name: str | None,
                                      rng: jax.Array | None = None,
                                      ema_batch_stats: Any = None,
                                      algorithm_state: Callable[[jax.Array], Any] | None = None
                                      ) -> Gradients:
    """Gradients of ``mean CE(f(x), y) + weight * mean softmax_mse(f(u), t)``, the loss
    shape of the Pi-model, Mean Teacher and MixMatch.

    One forward pass over ``Concat(labeled, unlabeled)`` (BatchNorm sees both, as in
    those methods' codes); ``consistency_targets`` then gives ``t`` (it may run further
    forward passes, continuing the BatchNorm statistics). Both means are over the global
    batch. Metrics: ``labeled_loss``, ``consistency_loss`` and ``consistency_weight``.
    ``rng`` draws a noisy network's noise in the first pass; ``ema_batch_stats`` as
    ``Gradients``'; ``algorithm_state(probabilities of the unlabeled images, without
    gradient)`` gives the new algorithm state.
    """
    num_labeled = labeled_images.shape[0]

    def objective(params: Any):
        logits, batch_stats = forward_train(
            state, params, jnp.concatenate([labeled_images, unlabeled_images]), rng=rng)
        supervised = global_mean(soft_cross_entropy(logits[:num_labeled], labeled_targets),
                                 axis_name)
        targets, batch_stats = consistency_targets(params, batch_stats)
        consistency = global_mean(softmax_mse(logits[num_labeled:], targets), axis_name)
        return supervised + weight * consistency, (
            batch_stats, (supervised, consistency, logits[num_labeled:]))

    def metrics(aux):
        supervised, consistency, _ = aux
        return {"labeled_loss": psum_if(supervised, axis_name),
                "consistency_loss": psum_if(consistency, axis_name),
                "consistency_weight": weight}

    new_algorithm_state = None
    if algorithm_state is not None:
        update = algorithm_state

        def new_algorithm_state(aux):
            return update(lax.stop_gradient(jax.nn.softmax(aux[2])))

    return gradients_of(objective, state, metrics, axis_name, ema_batch_stats,
                        new_algorithm_state)
