"""What every algorithm's gradient function takes and returns, and shared pieces."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.parallel import axis_size, gather_global, local_shard
from meta_semi_jax.state import TrainState, model_variables


@flax.struct.dataclass
class SSLBatch:
    """One device's share of a step's data, already augmented and normalised.

    labeled_images ``[B_l, H, W, C]``, labels ``[B_l]`` int, unlabeled_images ``[B_u, H, W, C]``.
    ``hidden_labels`` ``[B_u]`` (optional; -1 where unknown) are the true classes of the
    unlabeled images: they only feed diagnostics (pseudo-label accuracy), never a loss.
    """
    labeled_images: jax.Array
    labels: jax.Array
    unlabeled_images: jax.Array
    hidden_labels: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class HParams:
    """Static hyper-parameters of a step (hashable, so they can be jit-static).

    beta: Beta(beta, beta) of MixUp (Eqs. 12-13). meta_grad: how the meta scores are
    computed (``meta.META_GRAD_METHODS``). teacher_bn_mode: ``"train"`` normalises the
    EMA teacher with the unlabeled batch's statistics when it makes pseudo labels (ICT's
    code does this), ``"eval"`` with its running averages. ema_decay: maximum EMA decay.
    """
    num_classes: int
    beta: float = 1.0
    meta_grad: str = "jvp"
    teacher_bn_mode: str = "train"
    ema_decay: float = 0.999


class Gradients(NamedTuple):
    """An algorithm's result on one device: global gradients, the BatchNorm statistics
    after the training forward pass, and scalar metrics already averaged over devices."""
    grads: Any
    batch_stats: Any
    metrics: dict[str, jax.Array]


GradientFn = Callable[[TrainState, SSLBatch, jax.Array, HParams, "str | None"], Gradients]


def pmean_if(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def psum_if(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.psum(tree, axis_name)


def forward_train(state: TrainState, params: Any, inputs: jax.Array) -> tuple[jax.Array, Any]:
    """Logits in train mode (batch statistics) and the updated BatchNorm statistics."""
    logits, updates = state.apply_fn(model_variables(params, state.batch_stats), inputs,
                                     train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", state.batch_stats)


def per_example_loss_fn(state: TrainState) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
    """``loss_fn(params, (inputs, soft_targets)) -> [B]`` in train mode, for ``meta_scores``.

    BatchNorm normalises with the batch's statistics (as in the training forward pass);
    the statistics it would update are discarded, so they are updated once per step.
    """
    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        inputs, targets = batch
        logits, _ = forward_train(state, params, inputs)
        return soft_cross_entropy(logits, targets)
    return loss_fn


def pseudo_label_diagnostics(pseudo: jax.Array, hidden_labels: jax.Array,
                             num_labeled: int, weights: jax.Array,
                             axis_name: str | None) -> dict[str, jax.Array]:
    """Accuracy (%) of the EMA pseudo labels on all unlabeled examples with a known label,
    and on the examples of U~ that Eq. (9) selected / rejected.

    Example j of U~ = MixUp(W, Shuffle(W)) is built on W_j (weight lambda); it counts as
    selected or rejected with the correctness of W_j's pseudo label when W_j is an
    unlabeled example with a known label. For analysis only: nothing here reaches a loss.
    """
    known = (hidden_labels >= 0).astype(jnp.float32)
    correct = (jnp.argmax(pseudo, -1) == hidden_labels).astype(jnp.float32) * known
    # Per example of the global W = Concat(X, U); labeled examples are not counted.
    global_correct, global_known = gather_global((correct, known), axis_name)
    pad = jnp.zeros(num_labeled * axis_size(axis_name), jnp.float32)
    base_correct, base_known = local_shard(
        (jnp.concatenate([pad, global_correct]), jnp.concatenate([pad, global_known])),
        axis_name)

    def accuracy(mask: jax.Array) -> jax.Array:
        hits = psum_if(jnp.sum(base_correct * mask), axis_name)
        count = psum_if(jnp.sum(base_known * mask), axis_name)
        return jnp.where(count > 0, 100.0 * hits / jnp.maximum(count, 1.0), jnp.nan)

    all_hits = psum_if(jnp.sum(correct), axis_name)
    all_count = psum_if(jnp.sum(known), axis_name)
    return {"pseudo_label_accuracy": jnp.where(
                all_count > 0, 100.0 * all_hits / jnp.maximum(all_count, 1.0), jnp.nan),
            "selected_pseudo_label_accuracy": accuracy(weights),
            "rejected_pseudo_label_accuracy": accuracy(1.0 - weights)}


def pseudo_labels(state: TrainState, images: jax.Array, teacher_bn_mode: str) -> jax.Array:
    """``softmax(f(u; theta_ema))`` without gradient (Sec. 3.3, 'Pseudo labels')."""
    variables = model_variables(state.ema_params, state.ema_batch_stats)
    if teacher_bn_mode == "train":
        logits, _ = state.apply_fn(variables, images, train=True, mutable=["batch_stats"])
    else:
        logits = state.apply_fn(variables, images, train=False)
    # At least float32, so that low-precision logits give well-formed probabilities.
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return lax.stop_gradient(jax.nn.softmax(logits))
