"""The EMA teacher's ramped decay and update, and the optimisers of Appendix C: Nesterov
SGD with coupled L2 and a cosine schedule; Adam with decoupled decay on kernels only."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from meta_semi_jax.ema import ema_decay_at, ema_update
from meta_semi_jax.optim import learning_rate_schedule, make_optimizer


@pytest.mark.parametrize("max_decay", [0.99, 0.999])
def test_ema_decay_ramp(max_decay):
    """ema_decay_at(step) == min(1 - 1/(step+1), max_decay): 0 at step 0, then rising,
    capped at max_decay from step 1/(1-max_decay) - 1 on."""
    steps = np.array([0, 1, 2, 3, 9, 50, 98, 99, 100, 998, 999, 5000, 10**6])
    got = np.asarray(jax.jit(jax.vmap(lambda s: ema_decay_at(s, max_decay)))(jnp.asarray(steps)))
    expected = np.minimum(1.0 - 1.0 / (steps + 1.0), max_decay)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[0] == 0.0
    assert np.all(np.diff(got) >= 0)
    assert got[-1] == pytest.approx(max_decay, rel=1e-7)


def test_ema_update_on_pytree():
    """ema_update gives decay*ema + (1-decay)*new on every leaf of a nested tree;
    decay 0 copies new, decay 1 keeps ema."""
    r = np.random.default_rng(0)
    ema = {"a": {"kernel": r.normal(size=(3, 2)), "bias": r.normal(size=(2,))},
           "b": [r.normal(size=(4,)), r.normal(size=())]}
    new = jax.tree.map(lambda x: x + r.normal(size=np.shape(x)), ema)
    ema, new = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), (ema, new))
    for decay in (0.0, 0.3, 0.99, 1.0):
        out = jax.jit(ema_update)(ema, new, jnp.float32(decay))
        assert jax.tree.structure(out) == jax.tree.structure(ema)
        expected = jax.tree.map(
            lambda e, n, d=decay: d * np.asarray(e) + (1 - d) * np.asarray(n), ema, new)
        for o, e in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(o, e, rtol=1e-6, atol=1e-6)


def _config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        optimizer="sgd", learning_rate=0.1, lr_schedule="cosine", momentum=0.9,
        nesterov=True, weight_decay=1e-2, num_train_steps=10))
    c.update(overrides)
    return c


def _params():
    return {"Dense_0": {"kernel": jnp.array([[0.5, -1.0], [2.0, 0.25]], jnp.float32),
                        "bias": jnp.array([0.1, -0.3], jnp.float32)},
            "BatchNorm_0": {"scale": jnp.array([1.0, 1.5], jnp.float32)}}


def _cosine(lr: float, total: int, step: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_matches_hand_computed_momentum_with_coupled_l2(nesterov):
    """Two updates of make_optimizer('sgd') equal, leaf by leaf, PyTorch-style SGD:
    g' = g + wd*p; buf = mu*buf + g'; d = g' + mu*buf (Nesterov) or buf;
    p -= lr_t * d with lr_t the cosine schedule at steps 0 and 1; on every leaf,
    biases and BatchNorm scales included."""
    config = _config(nesterov=nesterov)
    lr, mu, wd, total = 0.1, 0.9, 1e-2, 10
    opt = make_optimizer(config)
    params = _params()
    r = np.random.default_rng(0)
    grads = [jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape), jnp.float32), params)
             for _ in range(2)]

    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    state = opt.init(params)
    got = params
    for g in grads:
        got, state = step(got, state, g)

    ref = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    buf = jax.tree.map(np.zeros_like, ref)
    for t, g in enumerate(grads):
        g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
        g2 = jax.tree.map(lambda gg, p: gg + wd * p, g, ref)
        buf = jax.tree.map(lambda b, gg: mu * b + gg, buf, g2)
        d = jax.tree.map(lambda gg, b: gg + mu * b, g2, buf) if nesterov else buf
        rate = _cosine(lr, total, t)
        ref = jax.tree.map(lambda p, dd, r=rate: p - r * dd, ref, d)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the update is not the plain-gradient one (momentum and L2 matter)
    plain = jax.tree.map(lambda p, g0, g1: np.asarray(p) - lr * np.asarray(g0)
                         - _cosine(lr, total, 1) * np.asarray(g1), params, *grads)
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(plain)[0], atol=1e-4)


def test_cosine_schedule_from_learning_rate_to_zero():
    """cosine: learning_rate at step 0, half of it midway, 0 at num_train_steps, and
    non-increasing; constant: learning_rate throughout."""
    sched = learning_rate_schedule(_config(num_train_steps=100, learning_rate=0.1))
    values = np.array([float(sched(s)) for s in range(0, 101)])
    assert values[0] == pytest.approx(0.1, rel=1e-6)
    assert values[50] == pytest.approx(0.05, rel=1e-5)
    assert values[100] == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.diff(values) <= 1e-7)
    np.testing.assert_allclose(values, [_cosine(0.1, 100, s) for s in range(101)],
                               rtol=1e-5, atol=1e-7)
    const = learning_rate_schedule(_config(lr_schedule="constant", learning_rate=0.002))
    for s in (0, 1, 50, 10_000):
        assert float(const(s)) == pytest.approx(0.002, rel=1e-6)


def test_adam_decoupled_decay_only_on_kernels():
    """With a zero gradient, one Adam step shrinks every 'kernel' leaf by the factor
    1 - lr*wd and leaves biases and BatchNorm scales unchanged."""
    lr, wd = 0.002, 0.02
    opt = make_optimizer(_config(optimizer="adam", learning_rate=lr, weight_decay=wd,
                                 lr_schedule="constant"))
    params = _params()
    params["Conv_0"] = {"kernel": jnp.ones((3, 3, 1, 2), jnp.float32),
                        "bias": jnp.ones((2,), jnp.float32)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    for layer in ("Dense_0", "Conv_0"):
        np.testing.assert_allclose(new[layer]["kernel"], (1 - lr * wd) * params[layer]["kernel"],
                                   rtol=1e-6, atol=1e-9)
        assert not np.array_equal(new[layer]["kernel"], params[layer]["kernel"])
        np.testing.assert_array_equal(new[layer]["bias"], params[layer]["bias"])
    np.testing.assert_array_equal(new["BatchNorm_0"]["scale"], params["BatchNorm_0"]["scale"])


def test_adam_step_with_gradient_is_adam_plus_kernel_decay():
    """One Adam step with gradient g moves each leaf by -lr*(g/(|g|+eps)) (Adam's first
    step), plus -lr*wd*p on kernels only."""
    lr, wd = 0.01, 0.1
    opt = make_optimizer(_config(optimizer="adam", learning_rate=lr, weight_decay=wd,
                                 lr_schedule="constant"))
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, jnp.float32) * jnp.sign(p), params)
    updates, _ = opt.update(grads, opt.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = path[-1].key
        p = params[path[0].key][name]
        g = grads[path[0].key][name]
        expected = -lr * np.sign(np.asarray(g))
        if name == "kernel":
            expected = expected - lr * wd * np.asarray(p)
        np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-7)
