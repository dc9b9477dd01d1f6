"""The meta-gradient (Eqs. 4-10), the weights (Eq. 9) and the weighted loss (Eq. 1).

Every method is checked against the literal Algorithm 1 (``unrolled_meta_gradient``:
a virtual SGD step on the w-weighted unlabeled loss, differentiated w.r.t. w at 0),
in float64 so that agreement can be asserted tightly.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_semi_jax import (
    labeled_gradient,
    meta_scores,
    meta_weights,
    score_unlabeled,
    soft_cross_entropy,
    unrolled_meta_gradient,
    weighted_loss,
)
from meta_semi_jax.meta import finite_difference_scores, last_layer_scores, scores_jvp


class TwoLayerNet(nn.Module):
    """Dense -> (BatchNorm in train mode) -> tanh -> Dense, in float64."""
    batch_norm: bool

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(7, param_dtype=jnp.float64, dtype=jnp.float64)(x)
        if self.batch_norm:
            # Batch statistics couple every example of the batch to every other one.
            x = nn.BatchNorm(use_running_average=False, param_dtype=jnp.float64,
                             dtype=jnp.float64)(x)
        x = jnp.tanh(x)
        self.sow("intermediates", "features", x)
        return nn.Dense(3, param_dtype=jnp.float64, dtype=jnp.float64)(x)


def make_problem(batch_norm: bool, seed: int = 0):
    """A model, its params and a dict-shaped loss_fn, labeled batch and unlabeled batch."""
    model = TwoLayerNet(batch_norm)
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    x_l = jax.random.normal(keys[0], (5, 4), jnp.float64)
    x_u = jax.random.normal(keys[1], (8, 4), jnp.float64)
    y_l = jax.nn.one_hot(jax.random.randint(keys[2], (5,), 0, 3), 3, dtype=jnp.float64)
    y_u = jax.nn.softmax(jax.random.normal(keys[3], (8, 3), jnp.float64))
    variables = model.init(keys[4], x_l)

    def loss_fn(params, batch):
        logits, _ = model.apply({**variables, "params": params}, batch["x"],
                                mutable=["batch_stats"])
        return soft_cross_entropy(logits, batch["y"])

    return loss_fn, variables["params"], {"x": x_l, "y": y_l}, {"x": x_u, "y": y_u}


pytestmark = pytest.mark.usefixtures("float64")  # conftest.py


def literal_scores(problem, learning_rate=1.0, steps=1):
    loss_fn, params, labeled, unlabeled = problem
    meta_grad = unrolled_meta_gradient(loss_fn, params, labeled, unlabeled,
                                       learning_rate=learning_rate, steps=steps)
    return -meta_grad / (learning_rate * steps)  # Eq. (10): meta-gradient = -alpha * M * s


def inner_product_scores(problem):
    """Eq. (10) spelled out: s_j = <grad sum_i L(x_i), grad L(u_j)>, each gradient taken
    on the full batch so that BatchNorm coupling is included."""
    loss_fn, params, labeled, unlabeled = problem
    g_x = jax.grad(lambda p: jnp.sum(loss_fn(p, labeled)))(params)
    jacobian = jax.jacrev(lambda p: loss_fn(p, unlabeled))(params)
    return sum(jax.tree.leaves(jax.tree.map(
        lambda jac, g: jnp.tensordot(jac, g, axes=g.ndim), jacobian, g_x)))


def reference_scores(problem, method):
    """What a scorer must return: the literal Algorithm 1, except for the ``unrolled``
    scorer, which *is* the literal Algorithm 1 and is checked against Eq. (10) instead."""
    return inner_product_scores(problem) if method == "unrolled" else literal_scores(problem)


def test_jvp_equals_unrolled_with_batchnorm_coupling():
    problem = make_problem(batch_norm=True)
    reference = literal_scores(problem)
    scores = meta_scores(*problem, method="jvp")
    assert scores.shape == (8,)
    np.testing.assert_allclose(scores, reference, rtol=1e-10, atol=1e-13)
    loss_fn, params, labeled, unlabeled = problem
    standalone = scores_jvp(loss_fn, params, labeled_gradient(loss_fn, params, labeled),
                            unlabeled)
    np.testing.assert_allclose(standalone, reference, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method,batch_norm", [("jvp", True), ("unrolled", True),
                                               ("per_example", False)])
def test_every_scorer_returns_the_scores_losses_and_pullback_of_eq_1(method, batch_norm):
    """``score_unlabeled`` (the trainer's path): Eq. (10)'s scores as the literal
    Algorithm 1 gives them, U~'s losses, the loss function's aux, and a pullback that
    gives the gradient of Eq. (1), ``sum_j c_j L_j`` with ``c_j = w_j / sum_k w_k``."""
    problem = make_problem(batch_norm=batch_norm)
    loss_fn, params, labeled, unlabeled = problem
    reference = reference_scores(problem, method)
    scored = score_unlabeled(method, lambda p, batch: (loss_fn(p, batch), "aux"), params,
                             labeled, unlabeled, labeled_gradient(loss_fn, params, labeled))
    np.testing.assert_allclose(scored.scores, reference, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(scored.losses, loss_fn(params, unlabeled), rtol=1e-12)
    assert scored.aux == "aux"
    weights = meta_weights(reference)
    assert 0 < float(jnp.sum(weights)) < len(weights)
    coefficients = weights / jnp.sum(weights)
    expected = jax.grad(lambda p: jnp.sum(coefficients * loss_fn(p, unlabeled)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13),
                 scored.pullback(coefficients), expected)


def test_per_example_is_wrong_under_batchnorm_coupling():
    """Why jvp is the default: per-example gradients drop the cross-example terms that
    BatchNorm's batch statistics create, so the scores (and signs) change."""
    problem = make_problem(batch_norm=True)
    reference = literal_scores(problem)
    per_example = meta_scores(*problem, method="per_example")
    assert np.max(np.abs(per_example - reference)) > 0.1 * np.max(np.abs(reference))


@pytest.mark.parametrize("method", ["jvp", "per_example", "unrolled"])
def test_all_methods_agree_without_coupling(method):
    problem = make_problem(batch_norm=False)
    np.testing.assert_allclose(meta_scores(*problem, method=method),
                               reference_scores(problem, method), rtol=1e-10, atol=1e-13)


def test_algorithm_1_and_the_default_scores_are_the_inner_product_of_gradients():
    """The literal Algorithm 1 and the default scorer both give Eq. (10)'s inner products
    under BatchNorm coupling."""
    problem = make_problem(batch_norm=True)
    expected = inner_product_scores(problem)
    np.testing.assert_allclose(literal_scores(problem), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(meta_scores(*problem), expected, rtol=1e-10)


@pytest.mark.parametrize("steps", [2, 3])
def test_proposition_1_m_steps_give_m_times_one_step(steps):
    loss_fn, params, labeled, unlabeled = make_problem(batch_norm=True)
    one = unrolled_meta_gradient(loss_fn, params, labeled, unlabeled, learning_rate=0.3)
    many = unrolled_meta_gradient(loss_fn, params, labeled, unlabeled, learning_rate=0.3,
                                  steps=steps)
    np.testing.assert_allclose(many, steps * one, rtol=1e-10, atol=1e-14)
    assert np.max(np.abs(one)) > 1e-3  # the identity is not trivially 0 = 0


@pytest.mark.parametrize("learning_rate", [1e-3, 0.1, 10.0])
def test_weights_do_not_depend_on_learning_rate(learning_rate):
    """Eq. (9) from the literal meta-gradient at any alpha > 0 equals meta_weights(s)."""
    loss_fn, params, labeled, unlabeled = make_problem(batch_norm=True, seed=3)
    meta_grad = unrolled_meta_gradient(loss_fn, params, labeled, unlabeled,
                                       learning_rate=learning_rate)
    literal_weights = (meta_grad <= 0).astype(jnp.float64)
    weights = meta_weights(meta_scores(loss_fn, params, labeled, unlabeled))
    np.testing.assert_array_equal(weights, literal_weights)
    assert 0 < np.sum(weights) < len(weights)  # both signs occur: the test can fail


def test_unrolled_scores_are_independent_of_steps_and_learning_rate():
    problem = make_problem(batch_norm=True)
    base = meta_scores(*problem, method="unrolled")
    other = meta_scores(*problem, method="unrolled", steps=3, learning_rate=0.05)
    np.testing.assert_allclose(other, base, rtol=1e-9)


def test_finite_differences_converge_to_algorithm_1_under_batchnorm():
    """The forward difference along g_X of the whole batch's losses keeps BatchNorm's
    coupling; its error shrinks with the step (O(eps))."""
    problem = make_problem(batch_norm=True)
    loss_fn, params, labeled, unlabeled = problem
    reference = literal_scores(problem)
    g_x = labeled_gradient(loss_fn, params, labeled)
    losses = loss_fn(params, unlabeled)
    errors = [np.max(np.abs(finite_difference_scores(loss_fn, params, g_x, unlabeled, losses,
                                                     step) - reference))
              for step in (1e-2, 1e-4, 1e-6)]
    scale = np.max(np.abs(reference))
    assert errors[0] > 10 * errors[1] > 100 * errors[2]
    assert errors[2] < 1e-5 * scale
    scored = score_unlabeled("finite_difference", lambda p, b: (loss_fn(p, b), None), params,
                             labeled, unlabeled, g_x)
    np.testing.assert_allclose(scored.scores, reference, rtol=1e-2, atol=1e-3 * scale)


def test_last_layer_scores_are_eq_10_over_the_classifier_alone():
    """The closed form against Eq. (10) by autodiff with g_X's non-classifier parts set
    to zero, on the BatchNorm network (whose features couple the examples)."""
    model = TwoLayerNet(batch_norm=True)
    loss_fn, params, labeled, unlabeled = make_problem(batch_norm=True)
    variables = model.init(jax.random.PRNGKey(4), labeled["x"])

    def logits_and_features(batch):
        logits, sown = model.apply({**variables, "params": params}, batch["x"],
                                   mutable=["batch_stats", "intermediates"])
        return logits, sown["intermediates"]["features"][0]

    g_x = labeled_gradient(loss_fn, params, labeled)
    classifier_only = {name: jax.tree.map(
        lambda leaf, keep=name == "Dense_1": leaf if keep else jnp.zeros_like(leaf), tree)
        for name, tree in g_x.items()}
    reference = scores_jvp(loss_fn, params, classifier_only, unlabeled)
    logits_u, h_u = logits_and_features(unlabeled)
    logits_x, h_x = logits_and_features(labeled)
    scores = last_layer_scores(logits_u, unlabeled["y"], h_u, logits_x, labeled["y"], h_x)
    np.testing.assert_allclose(scores, reference, rtol=1e-10, atol=1e-13)
    # Restricted to the classifier, it is not Eq. (10) over every parameter.
    assert np.max(np.abs(scores - literal_scores((loss_fn, params, labeled, unlabeled)))) > 1e-3


def test_score_unlabeled_refuses_last_layer():
    with pytest.raises(ValueError, match="not computed by score_unlabeled"):
        score_unlabeled("last_layer", lambda p, b: (b, None), {}, None, None, None)


def test_meta_scores_jit_compiles_and_matches_eager():
    loss_fn, params, labeled, unlabeled = make_problem(batch_norm=True)
    jitted = jax.jit(lambda p, x, u: meta_scores(loss_fn, p, x, u))
    np.testing.assert_allclose(jitted(params, labeled, unlabeled),
                               meta_scores(loss_fn, params, labeled, unlabeled), rtol=1e-12)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="allowed: jvp, unrolled, per_example"):
        meta_scores(*make_problem(batch_norm=False), method="hessian")


def test_meta_weights_is_one_where_meta_gradient_is_not_positive():
    scores = jnp.array([-2.0, -1e-12, 0.0, 1e-12, 3.0])
    np.testing.assert_array_equal(meta_weights(scores), [0, 0, 1, 1, 1])


def test_weighted_loss_is_the_weighted_mean_of_eq_1():
    losses = jnp.array([1.0, 2.0, 4.0, 8.0])
    weights = jnp.array([1.0, 0.0, 1.0, 0.0])
    assert weighted_loss(losses, weights) == pytest.approx((1.0 + 4.0) / 2)
    grad = jax.grad(weighted_loss)(losses, weights)
    np.testing.assert_allclose(grad, [0.5, 0.0, 0.5, 0.0])


def test_weighted_loss_with_all_zero_weights_is_zero_with_finite_zero_gradient():
    losses = jnp.array([1.0, 2.0, 3.0])
    weights = jnp.zeros(3)
    assert weighted_loss(losses, weights) == 0.0
    for argnum in (0, 1):
        grad = jax.grad(weighted_loss, argnums=argnum)(losses, weights)
        assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_weighted_loss_holds_the_weights_constant():
    losses = jnp.array([1.0, 2.0, 4.0])
    grad_w = jax.grad(weighted_loss, argnums=1)(losses, jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(grad_w, 0.0)
