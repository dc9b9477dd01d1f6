"""``train_step`` against Algorithm 1 written out line by line.

The reference below recomputes one Meta-Semi step from the paper: EMA pseudo labels,
MixUp (Eqs. 12-13), the meta-gradient by a literal virtual SGD step differentiated
w.r.t. the zero weights (lines 6-10), the 0-1 weights (line 11, Eq. 9), L_meta
(line 12, Eq. 1) and the SGD update (line 13). With plain SGD as the optimiser the
implementation (meta_grad='jvp') must land on the same parameters.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_semi_jax import (
    SSLBatch,
    create_train_state,
    mixup_labeled_and_unlabeled,
    soft_cross_entropy,
    train_step,
    unrolled_meta_gradient,
)
from meta_semi_jax.algorithms import ALGORITHMS, meta_semi, supervised
from tests.tiny_models import ConvBatchNormNet

ALPHA = 0.5
NUM_CLASSES = 4
META_SEMI = meta_semi.make(NUM_CLASSES, beta=0.75, meta_grad="jvp")
SUPERVISED = supervised.make(NUM_CLASSES)


pytestmark = pytest.mark.usefixtures("float64")  # conftest.py


# One model and one optimiser for every seed: they are static fields of the train state,
# so the jitted functions below are compiled once for all seeds.
MODEL = ConvBatchNormNet(NUM_CLASSES, features=6, dtype=jnp.float64,
                         activation=functools.partial(nn.leaky_relu, negative_slope=0.1))
OPTIMIZER = optax.sgd(ALPHA)


# Compiled, like the inputs drawn with NumPy: eager JAX compiles each primitive alone.
initial_state = jax.jit(create_train_state, static_argnums=(0, 1))


def make_inputs(seed=0):
    model = MODEL
    state = initial_state(model, OPTIMIZER, jax.random.PRNGKey(seed), jnp.zeros((1, 6, 6, 2)))
    rng = np.random.default_rng(seed + 1)
    batch = SSLBatch(labeled_images=rng.standard_normal((6, 6, 6, 2)),
                     labels=rng.integers(0, NUM_CLASSES, (6,)),
                     unlabeled_images=rng.standard_normal((10, 6, 6, 2)))
    return model, state, batch


def apply(model, params, batch_stats, x):
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                       mutable=["batch_stats"])


def teacher_on_clean_images(model, state, batch):
    """ICT's EMA model in train mode on the clean U, then the clean X: its logits on U and
    its running statistics after both passes (ICT averages only the parameters)."""
    logits_u, after_u = apply(model, state.ema_params, state.ema_batch_stats,
                              batch.unlabeled_images)
    _, after_x = apply(model, state.ema_params, after_u["batch_stats"], batch.labeled_images)
    return logits_u, after_x["batch_stats"]


def algorithm_1_step(model, state, batch, key, beta):
    """One iteration of Algorithm 1 (teacher BatchNorm in train mode, as ICT), and the
    EMA model's BatchNorm statistics from its own passes over the clean batch."""
    logits_u, teacher_stats = teacher_on_clean_images(model, state, batch)
    pseudo = jax.nn.softmax(logits_u)
    mixed_x, mixed_u = mixup_labeled_and_unlabeled(
        key, batch.labeled_images, jax.nn.one_hot(batch.labels, NUM_CLASSES),
        batch.unlabeled_images, pseudo, beta)

    def loss_fn(params, mixed):
        return soft_cross_entropy(apply(model, params, state.batch_stats, mixed[0])[0],
                                  mixed[1])

    meta_grad = unrolled_meta_gradient(loss_fn, state.params, tuple(mixed_x), tuple(mixed_u),
                                       learning_rate=ALPHA)               # lines 6-10
    weights = jnp.sign(jnp.maximum(-meta_grad, 0))                        # line 11

    def l_meta(params):                                                   # line 12
        logits, updates = apply(model, params, state.batch_stats, mixed_u.inputs)
        losses = soft_cross_entropy(logits, mixed_u.targets)
        return jnp.sum(weights * losses) / jnp.sum(weights), updates["batch_stats"]

    grads, batch_stats = jax.grad(l_meta, has_aux=True)(state.params)
    new_params = jax.tree.map(lambda p, g: p - ALPHA * g, state.params, grads)  # line 13
    return new_params, batch_stats, weights, meta_grad, teacher_stats


jitted_train_step = jax.jit(train_step, static_argnames=("algorithm", "ema_decay"))
jitted_algorithm_1_step = jax.jit(algorithm_1_step, static_argnums=(0, 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_step_equals_algorithm_1(seed):
    model, state, batch = make_inputs(seed)
    key = jax.random.PRNGKey(10 + seed)
    new_state, metrics = jitted_train_step(state, batch, key, algorithm=META_SEMI,
                                           ema_decay=0.999)

    ref_params, ref_batch_stats, weights, meta_grad, teacher_stats = jitted_algorithm_1_step(
        model, state, batch, key, 0.75)
    # Eq. (9) puts w = 1 also where the meta-gradient is exactly 0 (the reference's
    # sign(0) = 0); with continuous inputs that has probability 0.
    assert np.all(meta_grad != 0)
    assert 0 < float(jnp.sum(weights)) < len(weights)  # a real selection happened
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 new_state.params, ref_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 new_state.batch_stats, ref_batch_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 new_state.ema_batch_stats, teacher_stats)
    np.testing.assert_allclose(metrics["selected"], jnp.mean(weights), rtol=1e-12)
    # EMA after the first step: decay min(1 - 1/1, 0.999) = 0, so it copies the model.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
                 new_state.ema_params, new_state.params)
    assert int(new_state.step) == 1


def test_supervised_step_is_cross_entropy_on_labeled_data_only():
    model, state, batch = make_inputs()
    new_state, _ = train_step(state, batch, jax.random.PRNGKey(0), SUPERVISED, 0.999)

    def mean_ce(params):
        logits, _ = model.apply({"params": params, "batch_stats": state.batch_stats},
                                batch.labeled_images, train=True, mutable=["batch_stats"])
        return jnp.mean(soft_cross_entropy(logits, jax.nn.one_hot(batch.labels, NUM_CLASSES)))

    expected = jax.tree.map(lambda p, g: p - ALPHA * g, state.params,
                            jax.grad(mean_ce)(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10),
                 new_state.params, expected)
    # The unlabeled images do not matter.
    other = batch.replace(unlabeled_images=batch.unlabeled_images + 5.0)
    other_state, _ = train_step(state, other, jax.random.PRNGKey(0), SUPERVISED, 0.999)
    jax.tree.map(np.testing.assert_array_equal, other_state.params, new_state.params)


def test_ict_evaluates_its_ema_model_with_statistics_of_clean_images():
    """ICT's EMA model normalises with running statistics from its own train-mode passes
    over the clean U and X, not with an average of the student's, which saw only mixed
    images."""
    model, state, batch = make_inputs()
    state = state.replace(ema_params=jax.tree.map(lambda p: 1.1 * p, state.params))
    ict = ALGORITHMS["ict"].make(NUM_CLASSES, alpha=1.0, weight=1.0, rampup_steps=0,
                                 teacher_bn_mode="train")
    new_state, _ = train_step(state, batch, jax.random.PRNGKey(3), ict, 0.999)
    _, teacher_stats = teacher_on_clean_images(model, state, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
                 new_state.ema_batch_stats, teacher_stats)
    # Without an EMA (Table 5) the EMA model is the model, statistics included.
    no_ema, _ = train_step(state, batch, jax.random.PRNGKey(3), ict, 0.0)
    jax.tree.map(np.testing.assert_array_equal, no_ema.ema_batch_stats, no_ema.batch_stats)


def test_pseudo_label_diagnostics_by_hand():
    """W = Concat(X, U) with 2 labeled and 3 unlabeled examples; U's pseudo labels predict
    classes 0, 1, 2 and the hidden labels are 0, 2, unknown: one right, one wrong. Each
    example of U~ counts for the example of W it is dominated by (``sources``)."""
    from meta_semi_jax.algorithms.common import pseudo_label_diagnostics
    from meta_semi_jax.selection import accuracies

    pseudo = jax.nn.one_hot(jnp.array([0, 1, 2]), 3)
    hidden = jnp.array([0, 2, -1])

    def diagnostics(sources, selected):
        counts = pseudo_label_diagnostics(pseudo, hidden, jnp.array(sources),
                                          jnp.array(selected), None)
        return accuracies({k: int(v) for k, v in counts.items()})

    # lam >= 1/2: U~_j is credited to W_j; positions 2, 3, 4 are U's examples 0, 1, 2.
    identity = [0, 1, 2, 3, 4]
    both = diagnostics(identity, [1., 0., 1., 1., 0.])
    assert both["pseudo_label_accuracy"] == pytest.approx(50.0)
    assert both["pseudo_label_count"] == 2
    assert both["selected_pseudo_label_accuracy"] == pytest.approx(50.0)
    assert both["selected_pseudo_label_count"] == 2
    assert both["rejected_pseudo_label_accuracy"] is None  # only X and unknown
    assert both["rejected_pseudo_label_count"] == 0
    split = diagnostics(identity, [0., 0., 1., 0., 1.])
    assert split["selected_pseudo_label_accuracy"] == pytest.approx(100.0)
    assert split["rejected_pseudo_label_accuracy"] == pytest.approx(0.0)
    # lam < 1/2: U~_j is credited to its partner W_order[j]. U~_0 (selected) is mostly
    # U's example 1 (wrong), U~_3 (rejected) mostly U's example 0 (right).
    partners = diagnostics([3, 4, 1, 2, 0], [1., 0., 1., 0., 1.])
    assert partners["selected_pseudo_label_accuracy"] == pytest.approx(0.0)
    assert partners["rejected_pseudo_label_accuracy"] == pytest.approx(100.0)
    assert partners["selected_pseudo_label_count"] == partners["rejected_pseudo_label_count"] == 1
