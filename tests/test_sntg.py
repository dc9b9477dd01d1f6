"""MT + SNTG (``algorithms/sntg.py``) against its loss typed in, the direction of its
graph term's gradient, Mean Teacher's parts left as they are, and its independence of
the device count. In float64 (conftest's ``float64``)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from meta_semi_jax.algorithms import SSLBatch, mean_teacher, sntg
from meta_semi_jax.parallel import AXIS, make_mesh
from meta_semi_jax.state import TrainState

in_float64 = pytest.mark.usefixtures("float64")

C = 3
MT_SETTINGS: dict[str, Any] = {"rampup_steps": 10, "teacher_bn_mode": "train", "ema_warmup": False}


class SowingMLP(nn.Module):
    """Dense -> tanh (the features, sown like the models') -> Dense, in float64."""
    @nn.compact
    def __call__(self, x, train: bool):
        del train
        h = jnp.tanh(nn.Dense(3, param_dtype=jnp.float64)(x.reshape((x.shape[0], -1))))
        self.sow("intermediates", "features", h)
        return nn.Dense(C, param_dtype=jnp.float64)(h)


class SowingBatchNormNet(nn.Module):
    """Conv -> BatchNorm (synchronised over ``axis_name``) -> tanh -> mean pool -> dropout
    -> features (sown) -> Dense, in float64."""
    axis_name: str | None = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        kw = {"param_dtype": jnp.float64, "dtype": jnp.float64}
        x = nn.Conv(4, (3, 3), **kw)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, **kw)(x)
        x = jnp.mean(jnp.tanh(x), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        self.sow("intermediates", "features", x)
        return nn.Dense(C, **kw)(x)


def make_state(model, image_shape, seed, scale):
    """Parameters drawn with NumPy in model.init's shapes (nothing eager to compile); the
    EMA parameters a perturbation of them; step 5."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1,) + image_shape), train=False))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape)),
                          shapes["params"])
    ema = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape)), params)
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float64),
                         shapes.get("batch_stats", {}))
    return TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                             batch_stats=stats, ema_params=ema,
                             ema_batch_stats=stats).replace(step=jnp.asarray(5, jnp.int32))


def make_batch(seed, num_labeled, num_unlabeled, image_shape):
    rng = np.random.default_rng(seed)
    return SSLBatch(
        labeled_images=jnp.asarray(rng.standard_normal((num_labeled,) + image_shape)),
        labels=jnp.asarray(rng.integers(0, C, num_labeled), jnp.int32),
        unlabeled_images=jnp.asarray(rng.standard_normal((num_unlabeled,) + image_shape)),
        extra_unlabeled_views=jnp.asarray(
            rng.standard_normal((1, num_unlabeled) + image_shape)))


# The typed-in loss, for SowingMLP: h(x) = tanh(x W1 + b1), f(x) = h(x) W2 + b2.
def h(params, x):
    x = x.reshape((x.shape[0], -1))
    return jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])


def f(params, x):
    return h(params, x) @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def sntg_reference(state, batch, key, w, graph_weight, margin):
    """The loss as a function of the parameters, with the teacher graph and the pairs
    fixed: pairs (p[k], p[k + N/2]) of ``p = permutation(fold_in(key, PAIRS_STREAM), N)``
    over the nodes Concat(X, U); ``w`` the ramped consistency weight."""
    x, y = batch.labeled_images, jax.nn.one_hot(batch.labels, C)
    u1, u2 = batch.unlabeled_images, batch.extra_unlabeled_views[0]
    teacher = f(state.ema_params, u2)
    yhat = jnp.concatenate([batch.labels, jnp.argmax(teacher, -1)])
    n = yhat.shape[0]
    p = jax.random.permutation(jax.random.fold_in(key, sntg.PAIRS_STREAM), n)
    i, j = p[:n // 2], p[n // 2:]
    neighbours = yhat[i] == yhat[j]

    def loss(params):
        ce = -jnp.sum(y * jax.nn.log_softmax(f(params, x)), -1)
        mse = jnp.mean((jax.nn.softmax(f(params, u1)) - jax.nn.softmax(teacher)) ** 2, -1)
        feats = jnp.concatenate([h(params, x), h(params, u1)])
        d2 = jnp.sum((feats[i] - feats[j]) ** 2, -1) / feats.shape[1]
        contrastive = jnp.where(neighbours, d2, jnp.maximum(margin - jnp.sqrt(d2), 0) ** 2)
        return jnp.mean(ce) + w * (jnp.mean(mse) + graph_weight * jnp.mean(contrastive))
    return loss, (neighbours, i, j)


@in_float64
def test_sntg():
    state = make_state(SowingMLP(), (2, 2, 1), seed=0, scale=1.0)
    batch = make_batch(4, 4, 6, (2, 2, 1))
    key = jax.random.PRNGKey(7)
    weight, graph_weight, margin = 3.0, 0.7, 0.8
    algorithm = sntg.make(C, weight=weight, graph_weight=graph_weight, margin=margin,
                          noisy_network=False, **MT_SETTINGS)

    @jax.jit  # one program for the module and the reference
    def run(state, batch):
        result = algorithm.gradients(state, batch, key, None)
        # The ramp is float32 (rampup.py): its value below, the rest typed in here.
        loss, aux = sntg_reference(state, batch, key, result.metrics["consistency_weight"],
                                   graph_weight, margin)
        feats = jnp.concatenate([h(state.params, batch.labeled_images),
                                 h(state.params, batch.unlabeled_images)])
        return result, jax.value_and_grad(loss)(state.params), aux, feats

    result, (expected, expected_grads), (neighbours, i, j), feats = run(state, batch)
    np.testing.assert_allclose(result.metrics["loss"], expected, rtol=1e-9)
    for got, want in zip(jax.tree.leaves(result.grads), jax.tree.leaves(expected_grads),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    w = weight * np.exp(-5 * 0.5 ** 2)  # step 5 of a 10-step sigmoid ramp-up
    np.testing.assert_allclose(result.metrics["consistency_weight"], w, rtol=1e-6)
    np.testing.assert_allclose(result.metrics["neighbour_fraction"], np.mean(neighbours))
    # The problem exercises every branch: neighbours, and non-neighbours on both sides
    # of the margin; and the graph term is a real part of the loss.
    distance = np.sqrt(np.mean((feats[i] - feats[j]) ** 2, -1))
    neighbours = np.asarray(neighbours)
    assert neighbours.any()
    assert (~neighbours & (distance < margin)).any()
    assert (~neighbours & (distance > margin)).any()
    assert float(w * graph_weight * result.metrics["graph_loss"]) > 1e-2 * float(expected)


@in_float64
def test_graph_term_pulls_neighbours_together_and_pushes_others_to_the_margin():
    """The gradient of the contrastive loss w.r.t. the features: ``2 (h_i - h_j) / (D P)``
    for a pair of one class (descent pulls it together), ``-2 (m - d) (h_i - h_j) /
    (d D P)`` for a pair of two classes closer than the margin (descent pushes it apart),
    zero beyond the margin, and zero (not NaN) at coincident features."""
    key, margin, n, dim = jax.random.PRNGKey(3), 1.0, 8, 2
    p = np.asarray(jax.random.permutation(key, n))
    pairs = list(zip(p[:n // 2], p[n // 2:], strict=True))
    offsets = [np.array([0.3, 0.4]), np.array([0.3, 0.0]), np.array([3.0, 0.0]), np.zeros(2)]
    same_class = [True, False, False, False]
    features, labels = np.zeros((n, dim)), np.zeros(n, np.int32)
    for k, ((a, b), offset, same) in enumerate(zip(pairs, offsets, same_class, strict=True)):
        features[a] = np.array([0.0, 5.0 * k])
        features[b] = features[a] - offset
        labels[a], labels[b] = k, k if same else k + 10

    (loss, fraction), grad = jax.jit(jax.value_and_grad(
        lambda z: sntg.graph_loss(z, jnp.asarray(labels), key, margin), has_aux=True))(
            jnp.asarray(features))
    grad = np.asarray(grad)
    assert np.isfinite(grad).all()
    num_pairs = n // 2
    d = [np.sqrt(np.mean(o ** 2)) for o in offsets]
    terms = [d[0] ** 2, (margin - d[1]) ** 2, 0.0, margin ** 2]
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-12)
    np.testing.assert_allclose(fraction, 0.25)
    (a0, b0), (a1, b1), (a2, b2), (a3, b3) = pairs
    # Same class: pulled together.
    np.testing.assert_allclose(grad[a0], 2 * offsets[0] / (dim * num_pairs), rtol=1e-12)
    np.testing.assert_allclose(grad[b0], -grad[a0], rtol=1e-12)
    assert grad[a0] @ offsets[0] > 0  # a step against the gradient shrinks h_a - h_b
    # Different classes within the margin: pushed apart.
    np.testing.assert_allclose(
        grad[a1], -2 * (margin - d[1]) * offsets[1] / (d[1] * dim * num_pairs), rtol=1e-12)
    np.testing.assert_allclose(grad[b1], -grad[a1], rtol=1e-12)
    assert grad[a1] @ offsets[1] < 0
    # Beyond the margin, and coincident features: no force.
    np.testing.assert_array_equal(grad[[a2, b2, a3, b3]], 0.0)


@in_float64
def test_sntg_without_graph_term_is_mean_teacher():
    """With ``graph_weight = 0``, MT + SNTG is Mean Teacher: the same noise keys (input
    noise and dropout), BatchNorm statistics of student and teacher, loss and gradients."""
    model = SowingBatchNormNet(dropout_rate=0.5)
    state = make_state(model, (4, 4, 1), seed=2, scale=0.5)
    batch = make_batch(3, 4, 6, (4, 4, 1))
    key = jax.random.PRNGKey(11)
    settings: dict[str, Any] = {"weight": 4.0, "noisy_network": True, **MT_SETTINGS}
    with_graph = sntg.make(C, graph_weight=0.0, margin=1.0, **settings)
    baseline = mean_teacher.make(C, **settings)
    assert (with_graph.unlabeled_views, with_graph.noisy_network, with_graph.ema_warmup) == (
        baseline.unlabeled_views, baseline.noisy_network, baseline.ema_warmup)

    @jax.jit
    def run(state, batch):
        return (with_graph.gradients(state, batch, key, None),
                baseline.gradients(state, batch, key, None))

    got, want = run(state, batch)
    for name in ("grads", "batch_stats", "ema_batch_stats"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15),
                     getattr(got, name), getattr(want, name))
    for name, value in want.metrics.items():
        np.testing.assert_allclose(got.metrics[name], value, rtol=1e-12)
    assert float(got.metrics["graph_loss"]) > 0  # computed, only weighted by 0


SETTINGS: dict[str, Any] = {"weight": 2.0, "graph_weight": 0.5, "margin": 1.0,
                            "noisy_network": False, **MT_SETTINGS}
DEVICE_KEY = jax.random.PRNGKey(5)


@functools.cache
def device_problem():
    state = make_state(SowingBatchNormNet(axis_name=AXIS), (4, 4, 1), seed=4, scale=0.5)
    batch = make_batch(6, 4, 8, (4, 4, 1))
    return state, batch


# Two programs of its own (1 and 4 devices), as test_parallel's per-algorithm check: slow.
@pytest.mark.slow
@in_float64
def test_sntg_is_independent_of_the_device_count():
    """Four devices with synchronised BatchNorm give one device's gradients, statistics
    and metrics: the pairs are drawn over the global batch from the step's key, and
    each device adds its share of the graph term computed on the gathered features."""
    assert jax.device_count() >= 4, "conftest.py sets four CPU devices"
    state, batch = device_problem()
    algorithm = sntg.make(C, **SETTINGS)
    one_state = state.replace(apply_fn=SowingBatchNormNet().apply)
    one = jax.jit(algorithm.gradients, static_argnums=3)(one_state, batch, DEVICE_KEY, None)

    def per_device(state, x, y, u1, u2, key):
        local = SSLBatch(labeled_images=x, labels=y, unlabeled_images=u1,
                         extra_unlabeled_views=u2[None])
        return algorithm.gradients(state, local, key, AXIS)

    four = jax.jit(jax.shard_map(per_device, mesh=make_mesh(jax.devices()[:4]),
                                 in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS), P()),
                                 out_specs=P(), check_vma=False))(
        state, batch.labeled_images, batch.labels, batch.unlabeled_images,
        batch.extra_unlabeled_views[0], DEVICE_KEY)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 four, one)
    # Neighbours and non-neighbours both occur, and the graph term moves the gradients.
    assert 0 < float(one.metrics["neighbour_fraction"]) < 1
    assert float(one.metrics["graph_loss"]) > 0
