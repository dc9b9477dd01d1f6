"""Mean Teacher + fast-SWA (``algorithms/mean_teacher_fast_swa.py``): its learning-rate
cycles against the formula typed in, its weight average against the literal mean of
the student's weights at the averaging steps of a short run, the recomputed BatchNorm
statistics against a cumulative average computed by hand, the evaluated model on 1 and
4 devices, and its recipe. In float64 (conftest's ``float64``) where equations are
compared."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_semi_jax import algorithms, config_check
from meta_semi_jax.algorithms import SSLBatch, mean_teacher_fast_swa
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.bn_recompute import device_average_variables, recomputed_batch_stats
from meta_semi_jax.build import evaluated_model, the_ema_model
from meta_semi_jax.config_base import base_config
from meta_semi_jax.data.sampler import SamplerSpec
from meta_semi_jax.optim import LRCycles, learning_rate_schedule, make_optimizer
from meta_semi_jax.parallel import AXIS, DataParallel, make_mesh
from meta_semi_jax.state import TrainState, create_train_state
from meta_semi_jax.step import train_step
from meta_semi_jax.weight_average import FastSWA, WeightAverage
from tests.run_files import load_config
from tests.tiny_models import ConvBatchNormNet

in_float64 = pytest.mark.usefixtures("float64")

C = 3
initial_state = jax.jit(create_train_state, static_argnums=(0, 1))


def to_float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def float64_state(model: nn.Module, image_shape: tuple[int, ...]) -> TrainState:
    """``model``'s initial state with float64 BatchNorm statistics (flax keeps them in
    float32; the float64 step returns float64, which would compile it twice)."""
    state = initial_state(model, optax.sgd(0.1, momentum=0.9), jax.random.PRNGKey(0),
                          jnp.zeros((1,) + image_shape))
    return state.replace(batch_stats=to_float64(state.batch_stats),
                         ema_batch_stats=to_float64(state.ema_batch_stats))


def test_the_learning_rate_follows_fast_swas_cycles():
    """fast-SWA's adjust_learning_rate with lr 0.1, lr_rampdown_epochs 210, epochs 180,
    cycle_interval 30, one step per epoch: the cosine up to l0, then cycles that each
    restart at the cosine's value at l0 - c and end at its value at l0 - 1."""
    config = base_config()
    config.learning_rate = 0.1
    schedule = learning_rate_schedule(config, LRCycles(decay_steps=210, start_steps=180,
                                                       cycle_steps=30))

    def cosine(t):
        return 0.1 * 0.5 * (1.0 + math.cos(math.pi * t / 210))

    expected = {0: cosine(0), 90: cosine(90), 179: cosine(179),  # before l0
                180: cosine(150), 181: cosine(151), 195: cosine(165),  # the first cycle
                209: cosine(179), 210: cosine(150),  # a cycle's end and the next start
                1199: cosine(150 + (1199 - 180) % 30)}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6, err_msg=str(step))
    # Without cycles the config's schedule is unchanged.
    config.num_train_steps = 100
    np.testing.assert_allclose(float(learning_rate_schedule(config)(50)), 0.05, rtol=1e-6)


def test_the_optimizer_steps_with_the_cycles():
    """SGD without momentum or decay on a unit gradient moves by the cyclic rate."""
    config = base_config()
    config.learning_rate, config.momentum, config.nesterov, config.weight_decay = 0.1, 0.0, \
        False, 0.0
    cycles = LRCycles(decay_steps=30, start_steps=20, cycle_steps=10)
    optimizer = make_optimizer(config, cycles)
    schedule = learning_rate_schedule(config, cycles)
    params = jnp.zeros(())
    opt_state = optimizer.init(params)
    for step in range(40):
        update, opt_state = optimizer.update(jnp.ones(()), opt_state, params)
        np.testing.assert_allclose(float(update), -float(schedule(step)), rtol=1e-6)
    assert float(schedule(20)) == pytest.approx(float(schedule(10)))


# Averages the student after steps 1, 3 and 5 (from cycle_start - cycle = 1, every 2).
AVERAGING = mean_teacher_fast_swa.make(
    C, weight=1.0, rampup_steps=0, teacher_bn_mode="train", noisy_network=False,
    ema_warmup=False, lr_decay_steps=10, cycle_start_steps=3, cycle_steps=2,
    average_every_steps=2, bn_batches=3)
jitted_step = jax.jit(functools.partial(train_step, algorithm=AVERAGING, ema_decay=0.9))


def random_batch(seed: int, image_shape: tuple[int, ...]) -> SSLBatch:
    rng = np.random.default_rng(seed)
    return SSLBatch(labeled_images=jnp.asarray(rng.standard_normal((4,) + image_shape)),
                    labels=jnp.asarray(rng.integers(0, C, 4), jnp.int32),
                    unlabeled_images=jnp.asarray(rng.standard_normal((6,) + image_shape)),
                    extra_unlabeled_views=jnp.asarray(
                        rng.standard_normal((1, 6) + image_shape)))


@in_float64
def test_the_average_is_the_mean_of_the_students_weights_at_its_steps():
    state = float64_state(ConvBatchNormNet(C, dtype=jnp.float64), (5, 5, 1))
    state = state.replace(algorithm_state=AVERAGING.init_state(0, state.params))
    after = []  # the student's parameters after steps 1..6
    for i in range(6):
        state, _ = jitted_step(state, random_batch(i, (5, 5, 1)), jax.random.PRNGKey(i))
        after.append(state.params)
    average = WeightAverage(*state.algorithm_state)
    assert int(average.num_points) == 3
    expected = jax.tree.map(lambda p1, p3, p5: (p1 + p3 + p5) / 3, after[0], after[2], after[4])
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9),
                 average.params, expected)
    # The points differ, so a wrong choice of steps would give another mean.
    kernel = [p["Dense_0"]["kernel"] for p in after]
    assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[2], kernel[3])


class MomentumNet(nn.Module):
    """Conv 3x3 -> BatchNorm with running-average ``momentum`` -> mean pool -> Dense."""
    momentum: float

    @nn.compact
    def __call__(self, x, train: bool):
        kw = {"param_dtype": jnp.float64, "dtype": jnp.float64}
        x = nn.Conv(4, (3, 3), **kw)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, **kw)(x)
        return nn.Dense(C, **kw)(jnp.mean(nn.relu(x), axis=(1, 2)))


@in_float64
@pytest.mark.parametrize("momentum", [0.9, 0.999])
def test_recomputed_statistics_are_the_cumulative_average_of_the_batches(momentum):
    """Whatever the model's BatchNorm momentum and its current running statistics: the
    mean over four batches of each batch's mean and (biased) variance of the conv
    outputs, computed here from the conv alone."""
    model = MomentumNet(momentum)
    state = float64_state(model, (6, 6, 1))
    state = state.replace(batch_stats=jax.tree.map(lambda s: s + 3.0, state.batch_stats))
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda p: p + 0.5 * rng.standard_normal(p.shape), state.params)
    batches = rng.standard_normal((4, 5, 6, 6, 1)) * 2.0 + 1.0
    stats = jax.jit(lambda: recomputed_batch_stats(
        state, params, lambda i: jnp.asarray(batches)[i], 4, jax.random.PRNGKey(0), None))()
    conv = nn.Conv(4, (3, 3), param_dtype=jnp.float64, dtype=jnp.float64)
    outputs = [np.asarray(conv.apply({"params": params["Conv_0"]}, x)) for x in batches]
    mean = np.mean([h.mean(axis=(0, 1, 2)) for h in outputs], axis=0)
    var = np.mean([h.var(axis=(0, 1, 2)) for h in outputs], axis=0)
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], var, rtol=1e-9, atol=1e-12)


def device_problem():
    """A tiny run's pools, a state whose average holds two points, and the sampler."""
    rng = np.random.default_rng(0)
    data = DeviceData(
        labeled_images=rng.integers(0, 17, (12, 8, 8, 1), dtype=np.uint8),
        labeled_labels=rng.integers(0, C, (12,), dtype=np.int32),
        unlabeled_images=rng.integers(0, 17, (40, 8, 8, 1), dtype=np.uint8),
        mean=np.float32(8.0), std=np.float32(5.0))
    state = float64_state(ConvBatchNormNet(C, dtype=jnp.float64, axis_name=AXIS), (8, 8, 1))
    average = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape), state.params)
    state = state.replace(algorithm_state=WeightAverage(average, jnp.asarray(2, jnp.int32)))
    sampler = SamplerSpec(labeled_batch_size=8, unlabeled_batch_size=16, translate=1,
                          flip=True, unlabeled_views=2)
    return state, data, sampler


def evaluated_variables(num_devices, state, data, sampler):
    assert jax.device_count() >= num_devices, "conftest.py sets four CPU devices"
    dp = DataParallel("shard_map", make_mesh(jax.devices()[:num_devices]))
    fn = dp.run(functools.partial(device_average_variables, sampler=sampler,
                                  spec=FastSWA(0, 1, bn_batches=3)), ("replicated",) * 3)
    return dp.unreplicate(fn(*dp.replicate((state, data, jax.random.PRNGKey(2)))))


# Two programs of its own (1 and 4 devices), as test_parallel's per-algorithm check: slow.
@pytest.mark.slow
@in_float64
def test_the_evaluated_average_is_independent_of_the_device_count():
    """The averaged parameters and their recomputed statistics (synchronised BatchNorm,
    batches drawn from the global stream) are one device's on four; before the first
    averaging point the evaluated model is the EMA model, bit for bit."""
    state, data, sampler = device_problem()
    one_params, one_stats = evaluated_variables(1, state, data, sampler)
    four_params, four_stats = evaluated_variables(4, state, data, sampler)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), four_params, one_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 four_stats, one_stats)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), one_params,
                 state.algorithm_state.params)
    # Recomputed, not the state's statistics (zeros and ones).
    assert not np.allclose(one_stats["BatchNorm_0"]["mean"], 0.0)
    empty = state.replace(algorithm_state=WeightAverage(state.params, jnp.asarray(0, jnp.int32)))
    ema_params, ema_stats = evaluated_variables(1, empty, data, sampler)
    for got, want in ((ema_params, empty.ema_params), (ema_stats, empty.ema_batch_stats)):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, want)


def test_every_other_algorithm_evaluates_its_ema_model_as_it_is():
    """The one place that picks the evaluated model leaves the others' state untouched
    (so their metrics are what they were), and gives fast-SWA its average."""
    for name in sorted(set(algorithms.ALGORITHMS) - {"mean_teacher_fast_swa"}):
        config = load_config("digits", "50")
        config.algorithm = name
        made = algorithms.from_config(config, 10)
        assert made.weight_average is None and made.lr_cycles is None, name
        assert evaluated_model(None, made, None, None, None) is the_ema_model


def test_the_recipe_is_fast_swas_cifar10_cnn13_in_epochs():
    """cifar10_mt_cnn_short_n4k.py: cosine over 210 epochs, cycles of 30 after epoch 180,
    the student averaged every 3 epochs from epoch 150, BatchNorm statistics from 101
    batches; Mean Teacher's own recipe for the rest."""
    config = load_config("cifar10", "4000")
    config.algorithm = "mean_teacher_fast_swa"
    epoch = -(-(50_000 - config.num_validation) // 75)  # the CNN-13 configs' epoch
    made = algorithms.from_config(config, 10)
    assert made.lr_cycles == LRCycles(210 * epoch, 180 * epoch, 30 * epoch)
    assert made.weight_average == FastSWA(150 * epoch, 3 * epoch, 101)
    own = config.mean_teacher_fast_swa
    for field, value in config.mean_teacher.items():
        assert own[field] == value, field
    config_check.check_config(config, 1)
    config.lr_schedule = "constant"
    with pytest.raises(config_check.ConfigError, match="lr_schedule"):
        config_check.check_config(config, 1)
    config.lr_schedule = "cosine"
    config.mean_teacher_fast_swa.cycle_steps = 180 * epoch + 1
    with pytest.raises(config_check.ConfigError, match="cycle_steps"):
        config_check.check_config(config, 1)


def test_the_digits_recipe_keeps_the_cycles_within_the_run():
    config = load_config("digits", "50")
    config.num_train_steps = 2000  # the digits edition's
    own = config.mean_teacher_fast_swa
    assert (own.lr_decay_steps, own.cycle_start_steps, own.cycle_steps,
            own.average_every_steps) == (350, 300, 50, 5)
