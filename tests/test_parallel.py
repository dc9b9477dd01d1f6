"""Data parallelism: D devices with synchronised BatchNorm reproduce one device.

The program's per-device step (sampling, augmentation, pseudo labels, MixUp, meta
scores, Eq. 1 and the update) runs on 4 simulated CPU devices under ``shard_map`` and
under ``pmap``, and on 1 device with the same global batch; the results must agree.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from meta_semi_jax import (
    ALGORITHMS,
    algorithms,
    create_train_state,
    meta_scores,
    meta_weights,
    run_set,
)
from meta_semi_jax.batches import DeviceData
from meta_semi_jax.build import sampler_from_config
from meta_semi_jax.config_base import base_config
from meta_semi_jax.parallel import AXIS, DataParallel, make_mesh
from meta_semi_jax.step import device_train_step
from tests.tiny_models import ConvBatchNormNet

# Conv -> BatchNorm (synchronised over AXIS) -> ReLU -> pool -> Dense, in float64.
MODEL = ConvBatchNormNet(3, dtype=jnp.float64, axis_name=AXIS)


pytestmark = pytest.mark.usefixtures("float64")  # conftest.py


OPTIMIZER = optax.sgd(0.1, momentum=0.9)
# Compiled once for every run: eager JAX compiles each primitive alone.
initial_state = jax.jit(create_train_state, static_argnums=(0, 1))


def make_run(meta_grad: str = "jvp", algorithm: str = "meta_semi"):
    rng = np.random.default_rng(0)
    data = DeviceData(
        labeled_images=rng.integers(0, 17, (12, 8, 8, 1), dtype=np.uint8),
        labeled_labels=rng.integers(0, 3, (12,), dtype=np.int32),
        unlabeled_images=rng.integers(0, 17, (40, 8, 8, 1), dtype=np.uint8),
        mean=np.float32(8.0), std=np.float32(5.0))
    config = base_config()
    config.labeled_batch_size, config.unlabeled_batch_size = 8, 16
    config.translate, config.flip = 1, True
    config.meta_grad, config.algorithm, config.beta = meta_grad, algorithm, 0.75
    settings = algorithms.settings_from_config(config)
    # An unlabeled loss at full weight from the first step, whatever the recipe says.
    # fast-SWA: its student average after steps 1 and 2 (from step 0, every step).
    settings.update({k: v for k, v in (("weight", 10.0), ("rampup_steps", 0),
                                       ("cycle_start_steps", 1), ("cycle_steps", 1),
                                       ("average_every_steps", 1)) if k in settings})
    made = ALGORITHMS[algorithm].make(3, **settings)
    state = initial_state(MODEL, OPTIMIZER, jax.random.PRNGKey(1),
                          jnp.zeros((1, 8, 8, 1)))
    if made.init_state is not None:  # a value per unlabeled pool image, or an average
        state = state.replace(algorithm_state=made.init_state(data.unlabeled_images.shape[0],
                                                              state.params))
    # flax keeps BatchNorm statistics in float32; the float64 step returns them in
    # float64. Starting from float64 (the same zeros and ones) compiles the step once.
    state = state.replace(batch_stats=to_float64(state.batch_stats),
                          ema_batch_stats=to_float64(state.ema_batch_stats),
                          algorithm_state=to_float64(state.algorithm_state))
    step = functools.partial(device_train_step, algorithm=made, ema_decay=config.ema_decay,
                             sampler=sampler_from_config(config, made.unlabeled_views))
    return state, data, step


def first_devices(count: int) -> list[jax.Device]:
    """``count`` devices; fails rather than compare fewer (``conftest.py`` sets 4)."""
    assert jax.device_count() >= count, f"{jax.device_count()} devices, the test needs {count}"
    return jax.devices()[:count]


def to_float64(tree):
    """Floating leaves in float64 (integer ones, such as counts, keep their type)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree)



@functools.cache  # each configuration is compiled and run once
def run_steps(mode: str, num_devices: int, num_steps: int = 3, meta_grad: str = "jvp",
              algorithm: str = "meta_semi"):
    state, data, step = make_run(meta_grad, algorithm)
    dp = DataParallel(mode, make_mesh(first_devices(num_devices)))
    fn = dp.run(step, ("replicated",) * 3)
    state, data, key = dp.replicate(state), dp.replicate(data), dp.replicate(jax.random.PRNGKey(2))
    history = []
    for _ in range(num_steps):
        state, metrics = fn(state, data, key)
        history.append(dp.unreplicate(metrics))
    return dp.unreplicate(state), history


def assert_states_close(a, b, rtol=1e-9, atol=1e-11):
    for name in ("params", "batch_stats", "ema_params", "ema_batch_stats", "opt_state",
                 "algorithm_state"):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol),
                     getattr(a, name), getattr(b, name))


def test_four_devices_equal_one_device_under_shard_map():
    one_state, one_metrics = run_steps("shard_map", 1)
    four_state, four_metrics = run_steps("shard_map", 4)
    assert_states_close(four_state, one_state)
    for m1, m4 in zip(one_metrics, four_metrics, strict=True):
        assert m1["selected"] == m4["selected"]
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-9)
    # The update did something and selection is not trivial on this problem.
    assert all(0 < m["selected"] < 1 for m in one_metrics)
    assert not np.allclose(four_state.params["Dense_0"]["kernel"],
                           make_run()[0].params["Dense_0"]["kernel"])


def test_pmap_runs_the_same_function_with_the_same_result():
    shard_state, shard_metrics = run_steps("shard_map", 4)
    pmap_state, pmap_metrics = run_steps("pmap", 4)
    assert_states_close(pmap_state, shard_state, rtol=1e-12, atol=1e-14)
    for a, b in zip(shard_metrics, pmap_metrics, strict=True):
        assert a["selected"] == b["selected"]


@pytest.mark.slow  # two programs of its own (CI runs it)
def test_unrolled_meta_gradient_is_device_count_invariant_too():
    one_state, _ = run_steps("shard_map", 1, num_steps=1, meta_grad="unrolled")
    four_state, _ = run_steps("shard_map", 4, num_steps=1, meta_grad="unrolled")
    jvp_state, _ = run_steps("shard_map", 4, num_steps=1, meta_grad="jvp")
    assert_states_close(four_state, one_state)
    assert_states_close(jvp_state, one_state)


# Two programs of their own per algorithm (1 and 4 devices): in `pytest -m slow`, which
# CI runs. The default run covers Meta-Semi's (above) and the sharded scores (below).
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(set(ALGORITHMS) - {"meta_semi"}))
def test_every_algorithm_is_device_count_invariant(algorithm):
    one_state, one_metrics = run_steps("shard_map", 1, num_steps=2, algorithm=algorithm)
    four_state, four_metrics = run_steps("shard_map", 4, num_steps=2, algorithm=algorithm)
    # The devices' other summation order changes the last bits, which two algorithms carry
    # further: VAT moves each image by a unit direction scaled to epsilon (8 on 8x8 images
    # here), ~5e-9 after two steps, and MixMatch's label guesses are computed in float32
    # (guessed_labels), where one layout can round up what the other rounds down, up to
    # ~3e-7. A draw that depended on the device count gives O(1) differences.
    rtol, atol = {"vat": (1e-7, 1e-9), "mixmatch": (1e-6, 1e-8)}.get(algorithm, (1e-9, 1e-11))
    assert_states_close(four_state, one_state, rtol=rtol, atol=atol)
    np.testing.assert_allclose(four_metrics[-1]["loss"], one_metrics[-1]["loss"], rtol=rtol)


def test_sharded_meta_scores_and_weights_equal_the_concatenated_batch():
    """Scores from 4 shards (global g_X, synchronised BatchNorm) equal the scores of one
    device holding the concatenated batch, and the selected weights are identical."""
    model = MODEL
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"]
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    labeled = (jax.random.normal(keys[0], (8, 8, 8, 1)),
               jax.nn.one_hot(jax.random.randint(keys[1], (8,), 0, 3), 3))
    unlabeled = (jax.random.normal(keys[2], (16, 8, 8, 1)),
                 jax.nn.softmax(jax.random.normal(keys[3], (16, 3))))

    def scores_on_device(params, labeled, unlabeled):
        def loss_fn(p, batch):
            logits, _ = model.apply({"params": p, "batch_stats": {}}, batch[0], train=True,
                                    mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, batch[1])
        return meta_scores(loss_fn, params, labeled, unlabeled, axis_name=AXIS)

    def run(num_devices):
        mesh = make_mesh(first_devices(num_devices))
        fn = jax.jit(jax.shard_map(scores_on_device, mesh=mesh,
                                   in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS),
                                   check_vma=False))
        return fn(params, labeled, unlabeled)

    one, four = run(1), run(4)
    np.testing.assert_allclose(four, one, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(meta_weights(four), meta_weights(one))
    assert 0 < float(jnp.sum(meta_weights(one))) < 16


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_vmapped_runs_equal_the_runs_one_by_one(mode):
    """Two runs (other data, other key) stacked on a run axis and trained by one vmapped
    Meta-Semi step on 4 devices (``run_set.vmapped_step``) reach each run's own states
    and metrics; float64, so that no 0-1 weight of Eq. (9) sits within float noise of
    its threshold (in float32 they can flip: ``test_run_set``)."""
    state, data, step = make_run()
    other_data = data.replace(labeled_images=data.labeled_images[::-1],
                              unlabeled_images=data.unlabeled_images[::-1])
    runs = [(data, jax.random.PRNGKey(2)), (other_data, jax.random.PRNGKey(7))]
    dp = DataParallel(mode, make_mesh(first_devices(4)))
    axis = run_set.RunAxis(dp, 2)
    stacked_state = axis.stack([dp.replicate(state)] * 2)
    stacked_data = axis.stack([dp.replicate(d) for d, _ in runs])
    keys = axis.stack([dp.replicate(k) for _, k in runs])
    joint = run_set.vmapped_step(dp, step, "replicated")
    single = dp.run(step, ("replicated",) * 3)
    for _ in range(2):
        stacked_state, stacked_metrics = joint(stacked_state, stacked_data, keys)
    for i, (run_data, key) in enumerate(runs):
        alone = dp.replicate(state)
        for _ in range(2):
            alone, metrics = single(alone, dp.replicate(run_data), dp.replicate(key))
        assert_states_close(dp.unreplicate(axis.take(stacked_state, i)),
                            dp.unreplicate(alone), rtol=1e-7, atol=1e-9)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-9),
                     dp.unreplicate(axis.take(stacked_metrics, i)), dp.unreplicate(metrics))
