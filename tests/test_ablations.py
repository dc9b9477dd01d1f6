"""Table 5's ablation switches: each changes what it names and nothing else."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from meta_semi_jax import algorithms, config_check
from meta_semi_jax.algorithms import SSLBatch, meta_semi
from meta_semi_jax.state import create_train_state
from meta_semi_jax.step import train_step
from tests.tiny_models import ConvBatchNormNet

C = 3


@pytest.fixture(scope="session")  # kept while the worker runs other files
def problem():
    # Compiled set-up and NumPy draws: eager JAX compiles each primitive alone.
    state = jax.jit(create_train_state, static_argnums=(0, 1))(
        ConvBatchNormNet(C), optax.sgd(0.1), jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.default_rng(0)
    ema = jax.tree.map(lambda p: p + 0.5 * rng.standard_normal(p.shape, np.float32),
                       state.params)
    state = state.replace(ema_params=ema, step=jnp.asarray(50, jnp.int32))
    batch = SSLBatch(labeled_images=rng.standard_normal((4, 4, 4, 1), np.float32),
                     labels=np.array([0, 1, 2, 1], np.int32),
                     unlabeled_images=rng.standard_normal((8, 4, 4, 1), np.float32))
    return state, batch, jax.random.PRNGKey(4)


def pseudo_targets(state, batch, settings):
    return meta_semi.pseudo_targets(meta_semi.teacher(state, batch, settings).logits, settings)


def batches(problem, **switches):
    """X~, U~ and the pseudo labels of U under Table 5's ``switches``."""
    state, batch, key = problem
    settings = meta_semi.Settings(num_classes=C, beta=1.0, **switches)
    targets = pseudo_targets(state, batch, settings)
    return (*meta_semi.mixed_batches(batch, key, settings, targets), targets)


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_differ(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    assert any(not np.array_equal(x, y) for x, y in pairs)


def test_mixup_switches_turn_off_exactly_one_mixup(problem):
    _, batch, _ = problem
    both_x, both_u, pseudo = batches(problem)
    one_hot = jax.nn.one_hot(batch.labels, C)
    w = (jnp.concatenate([batch.labeled_images, batch.unlabeled_images]),
         jnp.concatenate([one_hot, pseudo]))
    x, u, _ = batches(problem, mixup="unlabeled")
    assert_same(x, (batch.labeled_images, one_hot))
    assert_same(u, both_u)
    x, u, _ = batches(problem, mixup="labeled")
    assert_same(x, both_x)
    assert_same(u, w)
    x, u, _ = batches(problem, mixup="none")
    assert_same(x, (batch.labeled_images, one_hot))
    assert_same(u, w)
    assert_differ(both_x, x)
    assert_differ(both_u, u)


def test_one_hot_pseudo_labels_change_only_the_targets_of_u(problem):
    _, batch, _ = problem
    soft_x, soft_u, soft = batches(problem, mixup="none")
    hard_x, hard_u, hard = batches(problem, mixup="none", pseudo_label="one_hot")
    np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(soft, -1), C))
    assert_same(hard_x, soft_x)
    np.testing.assert_array_equal(hard_u.inputs, soft_u.inputs)
    n_l = batch.labels.shape[0]
    np.testing.assert_array_equal(hard_u.targets[:n_l], soft_u.targets[:n_l])
    np.testing.assert_array_equal(hard_u.targets[n_l:], hard)
    assert not np.array_equal(soft, hard)
    mixed_soft, mixed_hard = batches(problem), batches(problem, pseudo_label="one_hot")
    np.testing.assert_array_equal(mixed_soft[1].inputs, mixed_hard[1].inputs)


def test_weight_switches_keep_the_scores(problem):
    state, batch, key = problem
    results = {rule: meta_semi.make(C, beta=1.0, weights=rule).gradients(state, batch, key)
               for rule in ("meta", "ones", "sign")}
    scores = {rule: float(r.metrics["mean_score"]) for rule, r in results.items()}
    assert scores["meta"] == scores["ones"] == scores["sign"]
    assert float(results["ones"].metrics["selected"]) == 1.0
    assert_differ(results["meta"].grads, results["ones"].grads)
    assert_differ(results["meta"].grads, results["sign"].grads)


def test_no_ema_makes_the_teacher_the_model_and_changes_nothing_else(problem):
    state, batch, key = problem
    algorithm = meta_semi.make(C, beta=1.0)
    with_ema, m1 = train_step(state, batch, key, algorithm, ema_decay=0.999)
    without, m0 = train_step(state, batch, key, algorithm, ema_decay=0.0)
    assert_same(without.ema_params, without.params)
    assert_same(without.ema_batch_stats, without.batch_stats)
    assert_same(without.params, with_ema.params)   # this step's update is the same
    assert_differ(with_ema.ema_params, with_ema.params)
    # From then on the pseudo labels are the model's own predictions.
    pseudo = pseudo_targets(without, batch, meta_semi.Settings(num_classes=C, beta=1.0))
    logits, _ = without.apply_fn({"params": without.params, "batch_stats": without.batch_stats},
                                 batch.unlabeled_images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(pseudo, jax.nn.softmax(logits), rtol=1e-6)


@pytest.mark.parametrize("field,value,other", [
    ("pseudo_label", "one_hot", "ict"), ("mixup", "none", "ict"), ("weights", "ones", "ict"),
    ("meta_grad", "unrolled", "ict"), ("teacher_bn_mode", "eval", "vat")])
def test_switches_are_refused_where_they_do_not_apply(field, value, other):
    """An algorithm that does not read a switch refuses it rather than ignoring it."""
    config = digits.get_config("50")
    config[field] = value
    config_check.check_config(config, 1)  # fine for Meta-Semi
    config.algorithm = other
    with pytest.raises(config_check.ConfigError,
                       match=f"config.{field}=.*{other}' does not use it, only .*meta_semi"):
        config_check.check_config(config, 1)


def test_l2rw_takes_the_mixup_switch_but_not_the_weights():
    config = digits.get_config("50")
    config.algorithm, config.mixup = "l2rw", "none"
    config_check.check_config(config, 1)
    config.weights = "sign"
    with pytest.raises(config_check.ConfigError, match="config.weights='sign'"):
        config_check.check_config(config, 1)


def test_the_factories_get_the_switches_and_sections_from_the_config():
    config = digits.get_config("50")
    config.mixup, config.weights, config.pseudo_label = "labeled", "sign", "one_hot"
    settings = algorithms.settings_from_config(config)
    assert (settings["mixup"], settings["weights"], settings["pseudo_label"]) == (
        "labeled", "sign", "one_hot")
    config.algorithm = "mixmatch"
    settings = algorithms.settings_from_config(config)
    assert (settings["alpha"], settings["weight"], settings["augmentations"]) == (0.75, 75.0, 2)
    assert algorithms.from_config(config, 10).unlabeled_views == 2
