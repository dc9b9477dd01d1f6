"""VAT+EntMin (``algorithms/vat.py``) against its formula typed in, its BatchNorm
bookkeeping (only the labeled pass updates the running statistics, as in vat_tf), and
its independence of the device count.

In float64 (conftest's ``float64``), where the literal power-iteration gradient at
``xi * d`` (a finite difference in exact arithmetic) is accurate, so the module's
first-order evaluation of it must agree to well within the tolerance.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from meta_semi_jax.algorithms import SSLBatch, vat
from meta_semi_jax.algorithms.common import forward_train
from meta_semi_jax.parallel import AXIS, make_mesh
from meta_semi_jax.state import TrainState
from tests.test_algorithms import C, ce, f, problem  # noqa: F401 (problem: a fixture)
from tests.tiny_models import ConvBatchNormNet

# Every test here runs in float64 (conftest.py), also where another module imports it.
in_float64 = pytest.mark.usefixtures("float64")

XI = 1e-6  # vat_tf's xi


def to_float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree)


def unit(d):
    """vat_tf's get_normalized_vector, per example."""
    d = d / (1e-12 + jnp.max(jnp.abs(d), axis=(1, 2, 3), keepdims=True))
    return d / jnp.sqrt(1e-6 + jnp.sum(d ** 2, axis=(1, 2, 3), keepdims=True))


def kl(q_logits, p_logits):
    q = jax.nn.softmax(q_logits)
    return jnp.sum(q * (jnp.log(q) - jax.nn.log_softmax(p_logits)), -1)


def ent(logits):
    p = jax.nn.softmax(logits)
    return -jnp.sum(p * jnp.log(p), -1)


def vat_reference(params0, batch, key, epsilon, alpha):
    """The loss as a function of the parameters, with r_adv from the literal gradient of
    the KL at xi * d (``d`` drawn from ``key`` for the unlabeled batch's shape)."""
    x, u = batch.labeled_images, batch.unlabeled_images
    q_logits = f(params0, u)
    d = XI * unit(jax.random.normal(key, u.shape, u.dtype))
    g = jax.grad(lambda d: jnp.mean(kl(q_logits, f(params0, u + d))))(d)
    r_adv = epsilon * unit(g)
    y = jax.nn.one_hot(batch.labels, C)
    return lambda p: (jnp.mean(ce(f(p, x), y))
                      + alpha * jnp.mean(kl(jax.lax.stop_gradient(f(p, u)), f(p, u + r_adv)))
                      + jnp.mean(ent(f(p, u))))


@in_float64
def test_vat(problem):  # noqa: F811
    state, batch, key = problem
    state = state.replace(params=to_float64(state.params))
    batch = to_float64(batch)
    epsilon, alpha = 2.0, 0.7
    y = jax.nn.one_hot(batch.labels, C)

    @jax.jit  # one program for the module and the reference
    def run(state, batch):
        result = vat.make(C, epsilon=epsilon, alpha=alpha).gradients(state, batch, key, None)
        reference = vat_reference(state.params, batch, key, epsilon, alpha)
        expected = jax.value_and_grad(reference)(state.params)
        parts = (jnp.mean(ce(f(state.params, batch.labeled_images), y)),
                 jnp.mean(ent(f(state.params, batch.unlabeled_images))))
        return result, expected, parts

    result, (expected, expected_grads), (labeled_loss, entropy) = run(state, batch)
    np.testing.assert_allclose(result.metrics["loss"], expected, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(result.grads), jax.tree.leaves(expected_grads),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(result.metrics["labeled_loss"], labeled_loss, rtol=1e-9)
    np.testing.assert_allclose(result.metrics["entropy"], entropy, rtol=1e-9)
    # The perturbation is not trivial: the LDS term is a real part of the loss.
    assert float(result.metrics["vat_loss"]) > 1e-3 * float(expected)


KEY = jax.random.PRNGKey(3)
ALGORITHM = vat.make(C, epsilon=1.0, alpha=1.0)


@functools.cache
def bn_problem():
    """Conv -> BatchNorm (synchronised over AXIS) -> ReLU -> pool -> Dense in float64,
    and a batch whose unlabeled images have other statistics than its labeled ones."""
    model = ConvBatchNormNet(C, dtype=jnp.float64, axis_name=AXIS)
    # Parameters drawn with NumPy in the shapes of model.init (no initialiser to compile).
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)),
                                               train=False))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape)),
                          shapes["params"])
    batch_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float64), shapes["batch_stats"])
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                              batch_stats=batch_stats, ema_params=params,
                              ema_batch_stats=batch_stats)
    rng = np.random.default_rng(1)
    batch = SSLBatch(labeled_images=jnp.asarray(rng.standard_normal((4, 4, 4, 1))),
                     labels=jnp.array([0, 1, 2, 1], jnp.int32),
                     unlabeled_images=jnp.asarray(2.0 + 3.0 * rng.standard_normal((8, 4, 4, 1))))
    return state, batch


@functools.cache
def one_device():
    """The state with the same network unsynchronised (one device: statistics over the
    whole batch) and VAT's result on it."""
    state, batch = bn_problem()
    state = state.replace(apply_fn=ConvBatchNormNet(C, dtype=jnp.float64).apply)
    return state, jax.jit(ALGORITHM.gradients, static_argnums=3)(state, batch, KEY, None)


@in_float64
def test_vat_updates_batch_norm_statistics_in_the_labeled_pass_only():
    """vat_tf updates the running statistics in the labeled pass only: the clean
    unlabeled pass and both perturbed passes run with ``update_batch_stats=False``."""
    state, result = one_device()
    _, batch = bn_problem()

    @jax.jit
    def passes(state, batch):
        labeled_only = forward_train(state, state.params, batch.labeled_images)[1]
        # What a further pass over unlabeled images would have made of them.
        return labeled_only, forward_train(state, state.params, batch.unlabeled_images,
                                           labeled_only)[1]

    labeled_only, with_unlabeled = passes(state, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
                 result.batch_stats, labeled_only)
    # The test can tell: both passes move the statistics.
    for before, after in ((state.batch_stats, labeled_only), (labeled_only, with_unlabeled)):
        assert not np.allclose(before["BatchNorm_0"]["mean"], after["BatchNorm_0"]["mean"])


# Two programs of its own (1 and 4 devices), as test_parallel's per-algorithm check: slow.
@pytest.mark.slow
@in_float64
def test_vat_is_independent_of_the_device_count():
    """Four devices with synchronised BatchNorm give one device's gradients, statistics
    and metrics: the random direction is drawn for the global batch and the power
    iteration's backward pass sums over the devices."""
    assert jax.device_count() >= 4, "conftest.py sets four CPU devices"
    state, batch = bn_problem()
    four = jax.jit(jax.shard_map(lambda s, b, k: ALGORITHM.gradients(s, b, k, AXIS),
                                 mesh=make_mesh(jax.devices()[:4]),
                                 in_specs=(P(), P(AXIS), P()), out_specs=P(),
                                 check_vma=False))(state, batch, KEY)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 four, one_device()[1])
