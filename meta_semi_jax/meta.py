"""The meta-gradient of Meta-Semi, its 0-1 weights and the weighted loss (paper Sec. 3.1-3.2).

Notation follows the paper. ``loss_fn(params, batch)`` returns the vector of
per-example losses of a batch (any pytree whose leaves share a leading example
axis). For a labeled batch X~ and an unlabeled (pseudo-labelled) batch U~ the
*meta score* of unlabeled example j is

    s_j = < grad_theta sum_i L(x~_i; theta),  grad_theta L(u~_j; theta) >,

and Eq. (10) says the meta-gradient of Algorithm 1 is ``-alpha * s_j``.

Five ways to compute ``s`` are offered. The first three are exact (``per_example`` only
without BatchNorm), the last two cheaper approximations, measured against ``jvp`` in
experiments/PERF.md (``score_unlabeled(method, ...)`` also returns U~'s losses and their
pullback for the update; ``meta_scores`` the scores alone):

* ``"jvp"`` (default): ``s = J_U(theta) g_X`` with one ``jax.grad`` for ``g_X``
  and one ``jax.jvp`` of ``theta -> loss_fn(theta, U~)``. Exact for any
  ``loss_fn``, including models whose examples interact through BatchNorm
  batch statistics, at the cost of about one extra forward pass.
* ``"unrolled"``: Algorithm 1 literally, a virtual SGD step (Eq. 5) and the
  derivative of the labeled loss w.r.t. the example weights at w = 0 (Eq. 7).
  The reference implementation; it is what PyTorch meta-reweighting code does.
* ``"per_example"``: ``vmap`` of ``jax.grad`` over single examples, then a dot
  product with ``g_X``. Exact only when examples do not interact (a model
  without train-mode BatchNorm); it also holds one gradient per example.
* ``"finite_difference"``: ``s_j ~ (L_j(theta + eps g_X) - L_j(theta)) / eps``, the
  change of each loss after a small step along ``g_X``: one more forward pass of U~ (the
  whole batch, so BatchNorm's interactions are in it), no tangent pass; exact up to
  O(eps) and rounding (``finite_difference_scores``).
* ``"last_layer"``: Eq. (10) restricted to the parameters of the affine classifier
  ``z = W h + b`` on the penultimate features ``h``, in closed form from the features
  and the output residuals ``softmax(z) - t`` (``last_layer_scores``): no extra pass,
  and X~ needs no backward pass. It needs the model's features, so the algorithms
  compute it (``algorithms.meta_semi``), not ``score_unlabeled``.

With ``axis_name`` set the functions run inside a data-parallel map
(``shard_map``/``pmap``) whose every device holds a shard of both batches:
``g_X`` is then the gradient of the *global* labeled batch and the normaliser
of Eq. (1) is global, so D devices reproduce one device on the concatenated
batch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax import lax

Params = Any
Batch = Any
LossFn = Callable[[Params, Batch], jax.Array]
LossFnWithAux = Callable[[Params, Batch], tuple[jax.Array, Any]]
MetaGradMethod = Literal["jvp", "unrolled", "per_example", "finite_difference", "last_layer"]
META_GRAD_METHODS: tuple[str, ...] = ("jvp", "unrolled", "per_example", "finite_difference",
                                      "last_layer")
# The length of the finite-difference step in parameter space: eps * ||g_X||.
FINITE_DIFFERENCE_STEP = 1e-3


def _psum_if(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.psum(tree, axis_name)


def labeled_gradient(loss_fn: LossFn, params: Params, labeled_batch: Batch,
                     axis_name: str | None = None) -> Params:
    """``g_X = grad_theta sum_i L(y~_i, p(x~_i|theta))``, the left factor of Eq. (10).

    Summed over all devices of ``axis_name``: local gradients of local sums add up to
    the gradient of the global sum, also when BatchNorm statistics are synchronised.
    """
    grad = jax.grad(lambda p: jnp.sum(loss_fn(p, labeled_batch)))(params)
    return _psum_if(grad, axis_name)


def scores_jvp(loss_fn: LossFn, params: Params, g_x: Params,
               unlabeled_batch: Batch) -> jax.Array:
    """``s = J_U(theta) g_X`` by one forward-mode product (Eq. 10, all j at once).

    ``J_U`` is the Jacobian of the per-example loss vector on U~. Because the whole
    batch goes through one ``jvp``, interactions between examples (BatchNorm batch
    statistics) are differentiated exactly.
    """
    _, scores = jax.jvp(lambda p: loss_fn(p, unlabeled_batch), (params,), (g_x,))
    return scores


def linearized_scores(loss_fn_with_aux: Callable[[Params], tuple[jax.Array, Any]],
                      params: Params, g_x: Params
                      ) -> tuple[jax.Array, jax.Array, Callable[[jax.Array], Params], Any]:
    """Eq. (10)'s scores and the pullback of the same forward pass, for the update.

    ``loss_fn_with_aux(params) -> (per-example losses on U~, aux)``. One
    ``jax.linearize`` runs the forward pass of U~ once; its linear map gives
    ``s = J_U g_X`` (as ``scores_jvp``) and its transpose ``c -> J_U^T c`` gives the
    gradient of ``sum_j c_j L_j`` for any coefficients ``c``, e.g. Eq. (1)'s
    ``w_j / sum_k w_k``, without a second forward pass.

    Returns ``(losses, scores, pullback, aux)``.
    """
    losses, jvp_fn, aux = jax.linearize(loss_fn_with_aux, params, has_aux=True)
    transpose = jax.linear_transpose(jvp_fn, params)
    return losses, jvp_fn(g_x), lambda coefficients: transpose(coefficients)[0], aux


def scores_per_example(loss_fn: LossFn, params: Params, g_x: Params,
                       unlabeled_batch: Batch) -> jax.Array:
    """``s_j = <g_X, grad_theta L(u~_j)>`` with each example differentiated alone.

    Equals Eq. (10) only when ``L_j`` does not depend on the other examples of the
    batch: each example is passed to ``loss_fn`` as a batch of one.
    """
    def example_gradient(example: Batch) -> Params:
        as_batch = jax.tree.map(lambda leaf: leaf[None], example)
        return jax.grad(lambda p: jnp.sum(loss_fn(p, as_batch)))(params)

    grads = jax.vmap(example_gradient)(unlabeled_batch)
    per_leaf = jax.tree.map(
        lambda g, d: jnp.tensordot(g, d, axes=d.ndim), grads, g_x)
    return cast(jax.Array, sum(jax.tree.leaves(per_leaf)))


def unrolled_meta_gradient(loss_fn: LossFn, params: Params, labeled_batch: Batch,
                           unlabeled_batch: Batch, *, learning_rate: float = 1.0,
                           steps: int = 1, axis_name: str | None = None) -> jax.Array:
    """``d/dw sum_i L(y~_i, p(x~_i | theta_bar_M(w)))`` at w = 0, Eqs. (4)-(8) literally.

    ``theta_bar_M`` is reached from ``theta`` by ``steps`` (M) virtual SGD steps of
    size ``learning_rate`` (alpha) on the w-weighted unlabeled loss (Eq. 5); the
    labeled loss at ``theta_bar_M`` is then differentiated w.r.t. w (Algorithm 1,
    lines 6-10). Proposition 1 states the result is M times the one-step value,
    which by Eq. (10) is ``-alpha * s``.
    """
    num_unlabeled = jax.tree.leaves(unlabeled_batch)[0].shape[0]
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def labeled_loss_after_virtual_steps(weights: jax.Array) -> jax.Array:
        def weighted_unlabeled_loss(theta: Params) -> jax.Array:
            return jnp.sum(weights * loss_fn(theta, unlabeled_batch))

        theta = params
        for _ in range(steps):
            grad = _psum_if(jax.grad(weighted_unlabeled_loss)(theta), axis_name)
            theta = jax.tree.map(lambda t, g: t - learning_rate * g, theta, grad)
        return jnp.sum(loss_fn(theta, labeled_batch))

    return jax.grad(labeled_loss_after_virtual_steps)(jnp.zeros(num_unlabeled, dtype))


def finite_difference_scores(loss_fn: LossFn, params: Params, g_x: Params,
                             unlabeled_batch: Batch, losses: jax.Array,
                             step: float = FINITE_DIFFERENCE_STEP) -> jax.Array:
    """``s_j ~ (L_j(theta + eps g_X) - L_j(theta)) / eps`` with ``eps = step / ||g_X||``:
    the directional derivative of Eq. (10) by a forward difference, from one more
    forward pass of the whole U~ (``losses`` are ``L_j(theta)``, already computed).

    The step moves the parameters by ``step`` in norm. Its error is O(eps) from the
    curvature plus float32 rounding of the losses divided by eps, so it is meant for
    float32 computation (a bfloat16 pass rounds at 1e-2, more than the difference).
    """
    norm = optax.tree.norm(g_x)
    eps = step / jnp.where(norm > 0, norm, 1.0)
    moved = jax.tree.map(lambda p, g: p + (eps * g).astype(p.dtype), params, g_x)
    return (loss_fn(moved, unlabeled_batch) - losses) / eps


def last_layer_scores(logits_u: jax.Array, targets_u: jax.Array, features_u: jax.Array,
                      logits_x: jax.Array, targets_x: jax.Array, features_x: jax.Array,
                      axis_name: str | None = None) -> jax.Array:
    """Eq. (10) restricted to the classifier ``z = W h + b``: ``s_j = <g_X, grad L_j>`` over
    ``W`` and ``b`` alone, in closed form.

    For the soft-target cross-entropy ``dL/dz = softmax(z) - t =: r``, so
    ``grad_W L = r h^T`` and ``grad_b L = r``. With ``G_W = sum_i r_i h_i^T`` and
    ``G_b = sum_i r_i`` over the global X~ (summed over ``axis_name``),
    ``s_j = r_j^T G_W h_j + r_j^T G_b``. ``h`` are the penultimate features (the
    classifier's inputs), ``[B, F]``; logits and targets ``[B, K]``. Exact for these
    parameters (``h`` does not depend on them); blind to every layer below.
    """
    residuals_x = jax.nn.softmax(logits_x) - targets_x
    residuals_u = jax.nn.softmax(logits_u) - targets_u
    g_w = _psum_if(jnp.einsum("ik,if->kf", residuals_x, features_x), axis_name)
    g_b = _psum_if(jnp.sum(residuals_x, axis=0), axis_name)
    return jnp.einsum("jk,kf,jf->j", residuals_u, g_w, features_u) + residuals_u @ g_b


class Scored(NamedTuple):
    """What every scoring method returns for U~ (``score_unlabeled``)."""
    losses: jax.Array                          # per-example losses L_j on U~, [B_u]
    scores: jax.Array                          # s_j of Eq. (10), [B_u]
    pullback: Callable[[jax.Array], Params]    # c -> grad_theta sum_j c_j L_j
    aux: Any                                   # the loss function's second output


def score_unlabeled(method: MetaGradMethod, loss_fn_with_aux: LossFnWithAux, params: Params,
                    labeled_batch: Batch, unlabeled_batch: Batch, g_x: Params | None, *,
                    axis_name: str | None = None, steps: int = 1,
                    learning_rate: float = 1.0) -> Scored:
    """Eq. (10)'s scores of U~ by ``method``, with U~'s losses and the pullback of the
    same forward pass (for the update, e.g. Eq. 1's gradient).

    ``loss_fn_with_aux(params, batch) -> ([B] per-example losses, aux)``. ``g_x`` is
    ``labeled_gradient`` of X~ (used by ``jvp`` and ``per_example``); ``unrolled``
    differentiates the labeled loss itself, through ``steps`` virtual SGD steps of size
    ``learning_rate`` (Algorithm 1 literally), and divides by ``-learning_rate * steps``
    so every method returns the same ``s`` (Proposition 1). ``jvp`` runs U~'s forward
    pass once for scores and pullback (``linearized_scores``); the others add one
    (``finite_difference``: a forward pass at ``theta + eps g_X``). ``last_layer`` needs
    the model's features and is not computed here (``last_layer_scores``).
    """
    def unlabeled(p: Params) -> tuple[jax.Array, Any]:
        return loss_fn_with_aux(p, unlabeled_batch)

    if method == "jvp":
        return Scored(*linearized_scores(unlabeled, params, g_x))
    if method not in META_GRAD_METHODS or method == "last_layer":
        raise ValueError(f"meta_grad method {method!r} is not computed by score_unlabeled; "
                         f"allowed: jvp, unrolled, per_example, finite_difference")
    losses, vjp_fn, aux = jax.vjp(unlabeled, params, has_aux=True)

    def losses_only(p: Params, batch: Batch) -> jax.Array:
        return loss_fn_with_aux(p, batch)[0]

    if method == "per_example":
        scores = scores_per_example(losses_only, params, g_x, unlabeled_batch)
    elif method == "finite_difference":
        scores = finite_difference_scores(losses_only, params, g_x, unlabeled_batch, losses)
    else:
        scores = -unrolled_meta_gradient(
            losses_only, params, labeled_batch, unlabeled_batch, learning_rate=learning_rate,
            steps=steps, axis_name=axis_name) / (learning_rate * steps)
    return Scored(losses, scores, lambda coefficients: vjp_fn(coefficients)[0], aux)


def meta_scores(loss_fn: LossFn, params: Params, labeled_batch: Batch,
                unlabeled_batch: Batch, method: MetaGradMethod = "jvp", *,
                axis_name: str | None = None, steps: int = 1,
                learning_rate: float = 1.0) -> jax.Array:
    """Meta scores ``s_j`` of every unlabeled example, Eq. (10): meta-gradient = ``-alpha * s_j``.

    The scores of ``score_unlabeled``, the code the trainer runs.

    Args:
      loss_fn: ``(params, batch) -> [B]`` per-example losses (soft-target
        cross-entropy of the model in the mode it is trained in).
      params: the parameters theta at which both gradients are taken.
      labeled_batch: X~, a pytree with a leading example axis.
      unlabeled_batch: U~ with its (pseudo) targets, same convention.
      method: ``"jvp"`` (exact, default), ``"unrolled"`` (Algorithm 1 literally),
        ``"per_example"`` (exact only for non-interacting examples) or
        ``"finite_difference"`` (approximate); ``"last_layer"`` needs the model's
        features (``last_layer_scores``).
      axis_name: device axis of a data-parallel map; makes ``g_X`` global.
      steps, learning_rate: M and alpha of the virtual steps, used by
        ``"unrolled"`` only; the result is divided by ``-alpha * M`` so all
        methods return the same ``s`` (Proposition 1).

    Returns:
      ``[B_u]`` array of scores.
    """
    g_x = (None if method == "unrolled" else
           labeled_gradient(loss_fn, params, labeled_batch, axis_name))
    return score_unlabeled(method, lambda p, batch: (loss_fn(p, batch), None), params,
                           labeled_batch, unlabeled_batch, g_x, axis_name=axis_name,
                           steps=steps, learning_rate=learning_rate).scores


def meta_weights(scores: jax.Array) -> jax.Array:
    """The 0-1 weights of Eq. (9): 1 where the meta-gradient ``-alpha * s_j <= 0``.

    For any learning rate alpha > 0 that is ``s_j >= 0``, so the weights do not
    depend on alpha. They are constants of the update (no gradient flows through).
    """
    return lax.stop_gradient((scores >= 0).astype(scores.dtype))


def l2rw_weights(scores: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Learning to Reweight's rule on the same scores: ``max(s_j, 0)`` (the clipped
    negative meta-gradient, up to alpha) normalised to sum 1 over the global batch;
    all zero stays zero. Constants of the update, like Eq. (9)'s weights."""
    clipped = jnp.maximum(scores, 0.0)
    total = _psum_if(jnp.sum(clipped), axis_name)
    return lax.stop_gradient(jnp.where(total > 0, clipped / jnp.where(total > 0, total, 1.0),
                                       0.0))


def loss_coefficients(weights: jax.Array, axis_name: str | None = None) -> jax.Array:
    """``w_j / sum_k |w_k|``, the coefficient of ``L_j`` in Eq. (1), and 0 when every
    weight is 0; the sum runs over all devices of ``axis_name``. Held constant."""
    weights = lax.stop_gradient(weights)
    total = _psum_if(jnp.sum(jnp.abs(weights)), axis_name)
    return weights / jnp.where(total > 0, total, jnp.ones_like(total))


def weighted_loss(losses: jax.Array, weights: jax.Array,
                  axis_name: str | None = None) -> jax.Array:
    """``L_meta = sum_j w_j L_j / sum_j |w_j|`` of Eq. (1), and 0 when every ``w_j`` is 0.

    For Eq. (9)'s 0-1 weights the normaliser ``sum_j |w_j|`` is Eq. (1)'s ``sum_j w_j``;
    for the signed weights of Table 5's +-1 ablation it is the batch size. The weights
    are held constant. The all-zero case returns exactly 0 with a zero, finite gradient
    (the paper's convention below Eq. 1). With ``axis_name`` the normaliser is summed
    over all devices and each device returns its share: the shares add up to Eq. (1)
    on the global batch, and so do their gradients.
    """
    return jnp.sum(loss_coefficients(weights, axis_name) * losses)
