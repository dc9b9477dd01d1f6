"""MixUp of Sec. 3.3 (Eqs. 11-13): the convex combination, the shuffle partner, the
labeled / unlabeled mixes and the Beta(beta, beta) coefficient."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_semi_jax.mixup import (
    Shuffle,
    labeled_and_unlabeled_shuffles,
    mixup,
    mixup_labeled_and_unlabeled,
    mixup_with_shuffle,
    sample_mixup_lambda,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.87, 1.0])
def test_mixup_is_eq11_convex_combination(lam):
    """``mixup`` returns exactly lam*x1 + (1-lam)*x2 for inputs and for targets."""
    r = _rng()
    x1, x2 = r.normal(size=(2, 5, 4, 4, 3)).astype(np.float32)
    y1, y2 = r.dirichlet(np.ones(6), size=(2, 5)).astype(np.float32)
    out = jax.jit(mixup)(x1, y1, x2, y2, jnp.float32(lam))
    np.testing.assert_allclose(out.inputs, lam * x1 + (1 - lam) * x2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.targets, lam * y1 + (1 - lam) * y2, rtol=1e-6, atol=1e-6)
    assert out.inputs.shape == x1.shape and out.targets.shape == y1.shape
    assert out.inputs.dtype == jnp.float32 and out.targets.dtype == jnp.float32


def test_mixup_keeps_input_dtype_of_each_operand():
    """lam is cast per operand: bf16 inputs stay bf16 while float32 targets stay float32."""
    x = jnp.ones((2, 3), jnp.bfloat16)
    y = jnp.full((2, 4), 0.25, jnp.float32)
    out = jax.jit(mixup)(x, y, 2 * x, y, jnp.float32(0.25))
    assert out.inputs.dtype == jnp.bfloat16 and out.targets.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.inputs, np.float32), 1.75)


def _recover_partner(targets_mixed: np.ndarray, lam: float) -> np.ndarray:
    """With one-hot target e_i for example i, mixed row i is lam*e_i + (1-lam)*e_order[i];
    the partner is the column carrying the (1-lam) weight (or i itself when order[i]==i)."""
    n = targets_mixed.shape[0]
    partner = np.empty(n, np.int64)
    for i in range(n):
        row = targets_mixed[i].copy()
        if np.isclose(row[i], 1.0, atol=1e-5):
            partner[i] = i
            continue
        assert np.isclose(row[i], lam, atol=1e-5), row
        row[i] = 0
        j = int(np.argmax(row))
        assert np.isclose(row[j], 1 - lam, atol=1e-5), row
        row[j] = 0
        assert np.allclose(row, 0, atol=1e-6), "more than one partner"
        partner[i] = j
    return partner


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_with_shuffle_partner_is_permutation_of_batch(seed):
    """Each example is mixed with one partner of the same batch, the partners form a
    bijection (a permutation), inputs use the same partner as targets, and the
    permutation is not the identity for a batch of 16."""
    n, lam = 16, 0.7
    inputs = jnp.asarray(_rng(seed).normal(size=(n, 3, 3, 2)), jnp.float32)
    targets = jnp.eye(n, dtype=jnp.float32)
    out = jax.jit(mixup_with_shuffle)(jax.random.PRNGKey(seed), inputs, targets, jnp.float32(lam))
    partner = _recover_partner(np.asarray(out.targets), lam)
    assert sorted(partner.tolist()) == list(range(n))
    assert not np.array_equal(partner, np.arange(n))
    np.testing.assert_allclose(out.inputs, lam * inputs + (1 - lam) * inputs[partner],
                               rtol=1e-5, atol=1e-5)


def test_mixup_with_shuffle_same_key_same_partners_other_key_other_partners():
    """The permutation is a function of the key alone."""
    n, lam = 16, 0.7
    inputs = jnp.zeros((n, 2), jnp.float32)
    targets = jnp.eye(n, dtype=jnp.float32)
    f = jax.jit(mixup_with_shuffle)
    p = [_recover_partner(np.asarray(f(jax.random.PRNGKey(k), inputs, targets, lam).targets), lam)
         for k in (3, 3, 4)]
    np.testing.assert_array_equal(p[0], p[1])
    assert not np.array_equal(p[0], p[2])


def _labeled_and_unlabeled_inputs(n_lab: int, n_unl: int, num_classes: int, seed: int):
    """Images are one-hot codes of the example id over X ++ U, so a mixed image tells
    which examples it came from."""
    r = _rng(seed)
    total = n_lab + n_unl
    codes = np.eye(total, dtype=np.float32).reshape(total, total, 1, 1)
    labels = r.integers(0, num_classes, n_lab)
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    pseudo = r.dirichlet(np.ones(num_classes), size=n_unl).astype(np.float32)
    return (jnp.asarray(codes[:n_lab]), jnp.asarray(one_hot), jnp.asarray(codes[n_lab:]),
            jnp.asarray(pseudo))


@jax.jit
def _mixes_and_shuffles(key, x, y, u, q):
    """``mixup_labeled_and_unlabeled`` and ``labeled_and_unlabeled_shuffles`` with the
    same key, in one program (Beta sampling compiles slowly)."""
    return (mixup_labeled_and_unlabeled(key, x, y, u, q, 0.5),
            labeled_and_unlabeled_shuffles(key, x.shape[0], u.shape[0], 0.5))


def _MIX_LU(key, x, y, u, q):
    return _mixes_and_shuffles(key, x, y, u, q)[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mixup_labeled_and_unlabeled_shapes_and_targets(seed):
    """X~ has |X| examples, U~ has |X|+|U|; all targets are probability vectors that are
    convex combinations of two rows of Concat(one-hot labels, pseudo labels) with the
    same coefficient as the inputs; X~ only mixes labeled examples."""
    n_lab, n_unl, c = 6, 10, 5
    x, y, u, q = _labeled_and_unlabeled_inputs(n_lab, n_unl, c, seed)
    mixed_x, mixed_u = _MIX_LU(jax.random.PRNGKey(seed), x, y, u, q)
    assert mixed_x.inputs.shape == (n_lab,) + x.shape[1:]
    assert mixed_x.targets.shape == (n_lab, c)
    assert mixed_u.inputs.shape == (n_lab + n_unl,) + x.shape[1:]
    assert mixed_u.targets.shape == (n_lab + n_unl, c)

    w_targets = np.concatenate([np.asarray(y), np.asarray(q)])
    for mixed, pool in ((mixed_x, n_lab), (mixed_u, n_lab + n_unl)):
        t = np.asarray(mixed.targets)
        codes = np.asarray(mixed.inputs).reshape(mixed.inputs.shape[0], -1)
        assert np.all(t >= -1e-7)
        np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-5)
        assert np.all(codes >= -1e-7)
        np.testing.assert_allclose(codes.sum(-1), 1.0, atol=1e-5)
        # Only examples of the pool take part (the labeled mix never sees U).
        assert np.allclose(codes[:, pool:], 0.0)
        # Example i is lam*w_i + (1-lam)*w_j: code weights give the targets.
        np.testing.assert_allclose(t, codes @ w_targets, atol=1e-5)
        # Each row's own example carries weight lam (same lam for the whole batch).
        own = codes[np.arange(len(codes)), np.arange(len(codes))]
        partner_weight = codes.sum(-1) - own
        lam = own[np.argmax(partner_weight)]  # a row with a genuine partner
        assert np.all(np.isclose(own, lam, atol=1e-5) | np.isclose(own, 1.0, atol=1e-5))
        # Partners (largest off-diagonal code) form a permutation of the pool.
        off = codes[:, :pool].copy()
        off[np.arange(pool), np.arange(pool)] = 0
        partner = np.where(off.max(-1) > 1e-6, off.argmax(-1), np.arange(pool))
        assert sorted(partner.tolist()) == list(range(pool))


def test_mixup_labeled_and_unlabeled_uses_separate_lambdas_and_is_deterministic():
    """Same key gives the same mixes; across keys the two mixes draw separate lams."""
    x, y, u, q = _labeled_and_unlabeled_inputs(6, 10, 5, 0)
    fn = _MIX_LU
    a = fn(jax.random.PRNGKey(7), x, y, u, q)
    b = fn(jax.random.PRNGKey(7), x, y, u, q)
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(la, lb)

    def own_weight(mixed):
        codes = np.asarray(mixed.inputs).reshape(mixed.inputs.shape[0], -1)
        return codes[np.arange(len(codes)), np.arange(len(codes))]

    differ = 0
    for k in range(8):
        mx, mu = fn(jax.random.PRNGKey(k), x, y, u, q)
        wx, wu = own_weight(mx), own_weight(mu)
        # take a row of each mix that was mixed with a partner
        lx = wx[~np.isclose(wx, 1.0)]
        lu = wu[~np.isclose(wu, 1.0)]
        if len(lx) and len(lu) and not np.isclose(lx[0], lu[0], atol=1e-4):
            differ += 1
    assert differ >= 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shuffles_are_the_draws_of_the_mixes(seed):
    """``labeled_and_unlabeled_shuffles`` gives the coefficients and partners that
    ``mixup_labeled_and_unlabeled`` draws from the same key, and ``dominant`` names the
    example whose weight in each mix is at least 1/2."""
    n_lab, n_unl = 6, 10
    x, y, u, q = _labeled_and_unlabeled_inputs(n_lab, n_unl, 5, seed)
    mixes, shuffles = _mixes_and_shuffles(jax.random.PRNGKey(seed), x, y, u, q)
    for mixed, shuffle in zip(mixes, shuffles, strict=True):
        pool = mixed.inputs.shape[0]
        codes = np.asarray(mixed.inputs).reshape(pool, -1)[:, :pool]
        lam, eye = float(shuffle.lam), np.eye(pool)
        np.testing.assert_allclose(codes, lam * eye + (1 - lam) * eye[np.asarray(shuffle.order)],
                                   atol=1e-6)
        assert np.all(codes[np.arange(pool), np.asarray(shuffle.dominant())] >= 0.5)


def test_dominant_component_by_hand():
    """lam >= 1/2 credits each mixed example to itself, lam < 1/2 to its partner."""
    order = jnp.array([2, 0, 1])
    np.testing.assert_array_equal(Shuffle(jnp.float32(0.3), order).dominant(), [2, 0, 1])
    np.testing.assert_array_equal(Shuffle(jnp.float32(0.5), order).dominant(), [0, 1, 2])
    np.testing.assert_array_equal(Shuffle(jnp.float32(0.9), order).dominant(), [0, 1, 2])


# One program for every beta (an argument, not a constant): Beta sampling compiles slowly.
_SAMPLE_LAMBDAS = jax.jit(jax.vmap(sample_mixup_lambda, in_axes=(0, None)))


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_sample_mixup_lambda_is_beta_beta(beta):
    """lam ~ Beta(beta, beta), used as drawn: values in [0, 1], mean 1/2, variance
    1/(4(2 beta + 1)), and about half the draws below 1/2 (no max(lam, 1-lam))."""
    keys = jax.random.split(jax.random.PRNGKey(0), 20_000)
    lam = np.asarray(_SAMPLE_LAMBDAS(keys, beta), np.float64)
    assert np.all((lam >= 0) & (lam <= 1))
    assert abs(lam.mean() - 0.5) < 0.01
    expected_var = 1.0 / (4 * (2 * beta + 1))
    assert abs(lam.var() - expected_var) < 0.05 * expected_var
    assert 0.45 < np.mean(lam < 0.5) < 0.55


def test_sample_mixup_lambda_differs_between_keys():
    f = jax.jit(functools.partial(sample_mixup_lambda, beta=0.5))
    others = {float(f(jax.random.PRNGKey(i))) for i in range(10)}
    assert len(others) == 10
