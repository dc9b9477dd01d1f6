"""Each algorithm's loss and gradients on a tiny problem against its formula written out.

The model is linear (no BatchNorm), so train and eval mode agree and each reference
below is the algorithm's published loss typed in directly, with the random draws
(MixUp's lambda and partners) taken from the same keys the algorithm documents.
Meta-Semi-type references get their weights from the literal unrolled meta-gradient.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_semi_jax import pseudo_labels, unrolled_meta_gradient
from meta_semi_jax.algorithms import ALGORITHMS, SSLBatch
from meta_semi_jax.rampup import linear_rampup, sigmoid_rampup
from meta_semi_jax.state import create_train_state
from meta_semi_jax.step import train_step

C = 3          # classes
N_L, N_U = 4, 6


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        del train
        features = x.reshape((x.shape[0], -1))
        self.sow("intermediates", "features", features)  # the classifier's inputs
        return nn.Dense(C)(features)


def f(params, x):
    return x.reshape((x.shape[0], -1)) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]


def ce(logits, targets):
    return -jnp.sum(targets * jax.nn.log_softmax(logits), -1)


def mse(logits, targets):
    return jnp.mean((jax.nn.softmax(logits) - targets) ** 2, -1)


def mix(key_lam, key_perm, alpha, x, y):
    """MixUp with one lambda for the batch, used as drawn (ICT's, Meta-Semi's)."""
    lam = jax.random.beta(key_lam, alpha, alpha)
    perm = jax.random.permutation(key_perm, x.shape[0])
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def mixmatch_mix(key_lam, key_perm, alpha, x, y):
    """MixMatch's augment_pair: lambda per example, max(lambda, 1 - lambda)."""
    lam = jax.random.beta(key_lam, alpha, alpha, (x.shape[0],))
    lam = jnp.maximum(lam, 1 - lam)
    perm = jax.random.permutation(key_perm, x.shape[0])
    lam_x = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return lam_x * x + (1 - lam_x) * x[perm], lam[:, None] * y + (1 - lam[:, None]) * y[perm]


@pytest.fixture(scope="session")  # kept while the worker runs other files
def problem():
    # Compiled set-up and NumPy draws: eager JAX compiles each primitive alone.
    state = jax.jit(create_train_state, static_argnums=(0, 1))(
        Linear(), optax.sgd(0.1), jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))
    rng = np.random.default_rng(0)
    ema = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape, np.float32),
                       state.params)
    state = state.replace(ema_params=ema, step=jnp.asarray(5, jnp.int32))
    batch = SSLBatch(labeled_images=rng.standard_normal((N_L, 2, 2, 1), np.float32),
                     labels=np.array([0, 1, 2, 1], np.int32),
                     unlabeled_images=rng.standard_normal((N_U, 2, 2, 1), np.float32),
                     extra_unlabeled_views=rng.standard_normal((1, N_U, 2, 2, 1), np.float32))
    return state, batch, jax.random.PRNGKey(7)


def check(algorithm, settings, problem, reference):
    """``algorithm`` made with ``settings`` (its factory's keywords) against ``reference``."""
    state, batch, key = problem
    result = ALGORITHMS[algorithm].make(C, **settings).gradients(state, batch, key, None)
    expected, expected_grads = jax.value_and_grad(reference)(state.params)
    np.testing.assert_allclose(result.metrics["loss"], expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(result.grads), jax.tree.leaves(expected_grads),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    return result


def test_rampups():
    assert float(sigmoid_rampup(5, 10)) == pytest.approx(np.exp(-5 * 0.25))
    assert float(sigmoid_rampup(20, 10)) == 1.0 and float(sigmoid_rampup(3, 0)) == 1.0
    assert float(linear_rampup(5, 10)) == pytest.approx(0.5)
    assert float(linear_rampup(20, 10)) == 1.0


def test_pseudo_labels_are_the_teacher_s_softmax_without_gradient(problem):
    """Sec. 3.3: softmax of the EMA teacher f(u; theta_ema), a constant of the update."""
    state, batch, _ = problem
    u = batch.unlabeled_images
    np.testing.assert_allclose(pseudo_labels(state, u, "eval"),
                               jax.nn.softmax(f(state.ema_params, u)), rtol=1e-6)
    grads = jax.grad(lambda ema: jnp.sum(
        pseudo_labels(state.replace(ema_params=ema), u, "eval")[:, 0]))(state.ema_params)
    assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_supervised(problem):
    _, batch, _ = problem
    y = jax.nn.one_hot(batch.labels, C)
    check("supervised", {}, problem,
          lambda p: jnp.mean(ce(f(p, batch.labeled_images), y)))


def test_supervised_mixup(problem):
    _, batch, key = problem
    k_lam, k_perm = jax.random.split(key)
    x, y = mix(k_lam, k_perm, 0.7, batch.labeled_images, jax.nn.one_hot(batch.labels, C))
    check("supervised_mixup", {"alpha": 0.7}, problem,
          lambda p: jnp.mean(ce(f(p, x), y)))


def test_pi_model(problem):
    state, batch, _ = problem
    hp = {"weight": 4.0, "rampup_steps": 10, "noisy_network": False}
    w = 4.0 * np.exp(-5 * 0.25)  # step 5 of a 10-step sigmoid ramp-up
    y = jax.nn.one_hot(batch.labels, C)
    u1, u2 = batch.unlabeled_images, batch.extra_unlabeled_views[0]
    check("pi_model", hp, problem, lambda p: jnp.mean(ce(f(p, batch.labeled_images), y))
          + w * jnp.mean(mse(f(p, u1), jax.nn.softmax(f(p, u2)))))  # gradient through both


def test_mean_teacher(problem):
    state, batch, _ = problem
    hp = {"weight": 100.0, "rampup_steps": 0, "teacher_bn_mode": "train",
          "noisy_network": False, "ema_warmup": True}
    y = jax.nn.one_hot(batch.labels, C)
    teacher = jax.nn.softmax(f(state.ema_params, batch.extra_unlabeled_views[0]))
    check("mean_teacher", hp, problem, lambda p: jnp.mean(ce(f(p, batch.labeled_images), y))
          + 100.0 * jnp.mean(mse(f(p, batch.unlabeled_images), teacher)))


def test_mean_teacher_fast_swa(problem):
    """Mean Teacher's loss, unchanged: fast-SWA changes only the learning rate, the weight
    average and the evaluated model (tests/test_fast_swa.py)."""
    state, batch, _ = problem
    hp = {"weight": 100.0, "rampup_steps": 0, "teacher_bn_mode": "train",
          "noisy_network": False, "ema_warmup": True, "lr_decay_steps": 10,
          "cycle_start_steps": 4, "cycle_steps": 2, "average_every_steps": 1, "bn_batches": 1}
    y = jax.nn.one_hot(batch.labels, C)
    teacher = jax.nn.softmax(f(state.ema_params, batch.extra_unlabeled_views[0]))
    check("mean_teacher_fast_swa", hp, problem,
          lambda p: jnp.mean(ce(f(p, batch.labeled_images), y))
          + 100.0 * jnp.mean(mse(f(p, batch.unlabeled_images), teacher)))


def test_temporal_ensembling(problem):
    """Laine & Aila's loss against the bias-corrected ensemble z~ = Z / (1 - a^n) of the
    earlier predictions (0 before the first), and the ensemble's update."""
    state, batch, _ = problem
    rng = np.random.default_rng(5)
    pool, momentum = 9, 0.6
    ids = np.array([4, 0, 7, 2, 8, 5], np.int32)  # N_U images of a pool of 9
    predictions = rng.dirichlet(np.ones(C), pool).astype(np.float32)
    counts = np.array([3, 0, 1, 0, 2, 0, 0, 5, 1], np.int32)
    state = state.replace(algorithm_state=(predictions, counts))
    batch = batch.replace(unlabeled_ids=ids)
    seen = counts[ids, None]
    targets = np.where(seen > 0, predictions[ids] / np.where(seen > 0, 1 - momentum ** seen, 1),
                       0.0)
    w = 2.0 * np.exp(-5 * 0.25)  # step 5 of a 10-step sigmoid ramp-up
    y = jax.nn.one_hot(batch.labels, C)
    result = check("temporal_ensembling",
                   {"weight": 2.0, "rampup_steps": 10, "momentum": momentum,
                    "noisy_network": False}, (state, batch, jax.random.PRNGKey(7)),
                   lambda p: jnp.mean(ce(f(p, batch.labeled_images), y))
                   + w * jnp.mean(mse(f(p, batch.unlabeled_images), targets)))
    new_predictions, new_counts = result.algorithm_state
    probs = jax.nn.softmax(f(state.params, batch.unlabeled_images))
    expected = predictions.copy()
    expected[ids] = momentum * predictions[ids] + (1 - momentum) * probs
    np.testing.assert_allclose(new_predictions, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(new_counts, counts + np.isin(np.arange(pool), ids))


@pytest.mark.parametrize("ema_warmup,decay", [(True, 1 - 1 / 6), (False, 0.999)])
def test_mean_teacher_keeps_its_ema_decay_from_the_first_step(problem, ema_warmup, decay):
    """Mean Teacher's CIFAR-10 recipe holds the EMA decay at 0.999 from the start; the
    others ramp it up as min(1 - 1/(t + 1), 0.999) (the problem's state is at step 5)."""
    state, batch, key = problem
    algorithm = ALGORITHMS["mean_teacher"].make(
        C, weight=1.0, rampup_steps=0, teacher_bn_mode="train", noisy_network=False,
        ema_warmup=ema_warmup)
    new_state, _ = train_step(state, batch, key, algorithm, ema_decay=0.999)
    for ema, old, new in zip(jax.tree.leaves(new_state.ema_params),
                             jax.tree.leaves(state.ema_params),
                             jax.tree.leaves(new_state.params), strict=True):
        np.testing.assert_allclose(ema, decay * old + (1 - decay) * new, rtol=1e-6)


def ict_reference_term(state, batch, key, alpha, weight):
    k_lam, k_perm = jax.random.split(key)
    teacher_logits = f(state.ema_params, batch.unlabeled_images)
    u, mixed_logits = mix(k_lam, k_perm, alpha, batch.unlabeled_images, teacher_logits)
    return lambda p: weight * jnp.mean(mse(f(p, u), jax.nn.softmax(mixed_logits)))


def test_ict(problem):
    state, batch, key = problem
    hp = {"alpha": 0.5, "weight": 10.0, "rampup_steps": 0, "teacher_bn_mode": "train"}
    k_lam, k_perm, k_cons = jax.random.split(key, 3)
    x, y = mix(k_lam, k_perm, 0.5, batch.labeled_images, jax.nn.one_hot(batch.labels, C))
    consistency = ict_reference_term(state, batch, k_cons, 0.5, 10.0)
    check("ict", hp, problem, lambda p: jnp.mean(ce(f(p, x), y)) + consistency(p))


def test_mixmatch(problem):
    state, batch, key = problem
    hp = {"alpha": 0.75, "weight": 75.0, "rampup_steps": 10, "temperature": 0.5,
          "augmentations": 2}
    views = jnp.stack([batch.unlabeled_images, batch.extra_unlabeled_views[0]])
    p_mean = (jax.nn.softmax(f(state.params, views[0]))
              + jax.nn.softmax(f(state.params, views[1]))) / 2
    q = p_mean ** 2 / jnp.sum(p_mean ** 2, -1, keepdims=True)  # T = 0.5
    # Unlabeled examples in example-major order: u_1 view 1, u_1 view 2, u_2 view 1, ...
    by_example = jnp.stack([views[0], views[1]], axis=1).reshape((2 * N_U,) + views.shape[2:])
    inputs = jnp.concatenate([batch.labeled_images, by_example])
    targets = jnp.concatenate([jax.nn.one_hot(batch.labels, C), jnp.repeat(q, 2, axis=0)])
    k_lam, k_perm = jax.random.split(key)
    x, y = mixmatch_mix(k_lam, k_perm, 0.75, inputs, targets)
    lambda_u = 75.0 * 0.5  # step 5 of a 10-step linear ramp-up
    check("mixmatch", hp, problem, lambda p: jnp.mean(ce(f(p, x[:N_L]), y[:N_L]))
          + lambda_u * jnp.mean(mse(f(p, x[N_L:]), y[N_L:])))


def meta_semi_reference(state, batch, key, beta, rule):
    """Algorithm 1 lines 4-12 typed in: MixUp of Eqs. 12-13, the literal unrolled
    meta-gradient (alpha = 1), the weights by ``rule``, and L_meta."""
    k_lam1, k_perm1, k_lam2, k_perm2 = jax.random.split(key, 4)
    pseudo = jax.nn.softmax(f(state.ema_params, batch.unlabeled_images))
    one_hot = jax.nn.one_hot(batch.labels, C)
    x, y = mix(k_lam1, k_perm1, beta, batch.labeled_images, one_hot)
    u, t = mix(k_lam2, k_perm2, beta, jnp.concatenate([batch.labeled_images,
                                                       batch.unlabeled_images]),
               jnp.concatenate([one_hot, pseudo]))
    def loss_fn(p, b):
        return ce(f(p, b[0]), b[1])
    scores = -unrolled_meta_gradient(loss_fn, state.params, (x, y), (u, t))
    weights = rule(scores)
    return lambda p: jnp.sum(weights * ce(f(p, u), t)) / jnp.sum(jnp.abs(weights)), weights


@pytest.mark.parametrize("weights,rule", [
    ("meta", lambda s: (s >= 0).astype(s.dtype)),
    ("ones", jnp.ones_like),
    ("sign", lambda s: jnp.where(s >= 0, 1.0, -1.0)),
])
def test_meta_semi_and_its_weight_ablations(problem, weights, rule):
    state, batch, key = problem
    reference, expected_w = meta_semi_reference(state, batch, key, 0.5, rule)
    result = check("meta_semi", {"beta": 0.5, "weights": weights}, problem, reference)
    assert float(result.metrics["selected"]) == pytest.approx(float(jnp.mean(expected_w > 0)))


@pytest.mark.parametrize("meta_grad", ["last_layer", "finite_difference"])
def test_cheaper_scores_are_exact_on_a_linear_model(problem, meta_grad):
    """On a linear model every parameter is the classifier's, so ``last_layer`` is
    Eq. (10) itself, and finite differences are exact up to O(eps): both select as the
    literal Algorithm 1 and give its L_meta, and the logged agreement with ``jvp`` is 1."""
    state, batch, key = problem
    reference, expected_w = meta_semi_reference(state, batch, key, 0.5,
                                                lambda s: (s >= 0).astype(s.dtype))
    result = check("meta_semi", {"beta": 0.5, "meta_grad": meta_grad,
                                 "log_selection_agreement": True}, problem, reference)
    assert float(result.metrics["selected"]) == pytest.approx(float(jnp.mean(expected_w)))
    assert 0 < float(jnp.mean(expected_w)) < 1
    agreeing = result.metrics["count/selection_agreement_correct"]
    assert int(agreeing) == int(result.metrics["count/selection_agreement_known"]) == N_L + N_U


def test_l2rw(problem):
    state, batch, key = problem
    def rule(s):
        return jnp.maximum(s, 0) / jnp.sum(jnp.maximum(s, 0))
    reference, weights = meta_semi_reference(state, batch, key, 0.5, rule)
    assert float(jnp.sum(weights)) == pytest.approx(1.0)
    check("l2rw", {"beta": 0.5}, problem, reference)


def test_meta_semi_ict(problem):
    state, batch, key = problem
    hp = {"beta": 0.5, "alpha": 0.3, "weight": 5.0, "rampup_steps": 0}
    meta, _ = meta_semi_reference(state, batch, key, 0.5, lambda s: (s >= 0).astype(s.dtype))
    consistency = ict_reference_term(state, batch, jax.random.fold_in(key, 1), 0.3, 5.0)
    check("meta_semi_ict", hp, problem, lambda p: meta(p) + consistency(p))


def test_l2rw_weights_all_zero_stay_zero():
    from meta_semi_jax.meta import l2rw_weights
    np.testing.assert_array_equal(l2rw_weights(jnp.array([-1.0, -2.0])), [0.0, 0.0])
    np.testing.assert_allclose(l2rw_weights(jnp.array([3.0, -2.0, 1.0])), [0.75, 0.0, 0.25])


def test_every_registered_algorithm_has_its_reference_test():
    """Adding an algorithm to the registry without a test of its loss (``test_<name>`` or
    ``test_<name>_and_...`` here or in ``tests/test_<name>.py``) fails here."""
    import importlib.util

    def tests_of(module):
        return [name for name in vars(module) if name.startswith("test_")]

    here = tests_of(importlib.import_module(__name__))
    untested = []
    for algorithm in ALGORITHMS:
        tests = list(here)
        if importlib.util.find_spec(f"tests.test_{algorithm}") is not None:
            tests += tests_of(importlib.import_module(f"tests.test_{algorithm}"))
        if not any(name == f"test_{algorithm}" or name.startswith(f"test_{algorithm}_and_")
                   for name in tests):
            untested.append(algorithm)
    assert not untested, f"no reference test for {untested}"
