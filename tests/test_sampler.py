"""Batches drawn on the device: epoch-wise reshuffled index streams and ``sample_batch``
gathering, normalising and labelling the right examples."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.sampler import SamplerSpec, epoch_shuffled_indices, sample_batch


def _stream(key: jax.Array, num_steps: int, batch_size: int, pool_size: int) -> np.ndarray:
    f = jax.jit(epoch_shuffled_indices, static_argnums=(2, 3))
    return np.concatenate([np.asarray(f(key, jnp.int32(s), batch_size, pool_size))
                           for s in range(num_steps)])


@pytest.mark.parametrize("batch_size,pool_size",
                         [(4, 10), (3, 7), (5, 5), (7, 8), (13, 6), (32, 30), (64, 40)])
def test_each_epoch_of_the_stream_is_a_permutation_of_the_pool(batch_size, pool_size):
    """Concatenated batches of steps 0, 1, ... read the pool once per epoch, in a new
    order every epoch, also when batches straddle epoch boundaries and when a batch is
    larger than the pool (FixMatch's 40 labels in batches of 64; digits' 30 in 32)."""
    num_epochs = 6
    num_steps = -(-num_epochs * pool_size // batch_size)
    stream = _stream(jax.random.PRNGKey(0), num_steps, batch_size, pool_size)
    epochs = stream[:num_epochs * pool_size].reshape(num_epochs, pool_size)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(pool_size))
    orders = {tuple(e) for e in epochs}
    assert len(orders) == num_epochs, "epochs repeat an order"
    # the first epoch is not just range(pool_size)
    assert not np.array_equal(epochs[0], np.arange(pool_size))


def test_another_key_gives_another_stream_and_late_steps_stay_in_range():
    key = jax.random.PRNGKey(5)
    a = _stream(key, 10, 4, 10)
    b = _stream(jax.random.PRNGKey(6), 10, 4, 10)
    assert not np.array_equal(a, b)
    # A large step far into training still yields in-range, duplicate-free batches.
    f = jax.jit(epoch_shuffled_indices, static_argnums=(2, 3))
    late = np.asarray(f(key, jnp.int32(123_457), 4, 10))
    assert len(set(late.tolist())) == 4 and late.min() >= 0 and late.max() < 10


LAB_POOL, UNL_POOL, C = 12, 20, 1
MEAN, STD = 3.0, 2.0


def _device_data() -> DeviceData:
    """Image i of each pool is constant-valued: i for labeled, 100 + i for unlabeled, so a
    normalised image tells which example was gathered; label of labeled i is (7 i) mod 10."""
    lab = np.broadcast_to(np.arange(LAB_POOL, dtype=np.uint8)[:, None, None, None],
                          (LAB_POOL, 6, 6, C)).copy()
    unl = np.broadcast_to((100 + np.arange(UNL_POOL)).astype(np.uint8)[:, None, None, None],
                          (UNL_POOL, 6, 6, C)).copy()
    labels = (7 * np.arange(LAB_POOL) % 10).astype(np.int32)
    return DeviceData(labeled_images=jnp.asarray(lab), labeled_labels=jnp.asarray(labels),
                      unlabeled_images=jnp.asarray(unl),
                      mean=jnp.full((C,), MEAN, jnp.float32), std=jnp.full((C,), STD, jnp.float32))


def _recover(images: np.ndarray) -> np.ndarray:
    """The pool value of each (constant) image after undoing the normalisation."""
    raw = images * STD + MEAN
    assert np.allclose(raw, raw[:, :1, :1, :1]), "images are not constant: altered"
    values = raw[:, 0, 0, 0]
    np.testing.assert_allclose(values, np.round(values), atol=1e-4)
    return np.round(values).astype(int)


@pytest.mark.parametrize("b_l", [4, 16])  # 16: a labeled batch larger than its pool
def test_sample_batch_gathers_normalised_images_with_their_labels(b_l):
    """With axis_name=None, translate=0 and flip=False: shapes [B_l,...], [B_l],
    [B_u,...]; images float32 (x - mean)/std of pool examples; each label is the label of
    the image drawn; labeled images come from the labeled pool only, unlabeled from the
    unlabeled pool only; over consecutive steps each pool is read once per epoch."""
    data = _device_data()
    b_u = 5
    sample = jax.jit(functools.partial(sample_batch, spec=SamplerSpec(
        labeled_batch_size=b_l, unlabeled_batch_size=b_u, translate=0, flip=False),
        axis_name=None))
    key = jax.random.PRNGKey(0)
    lab_seen, unl_seen = [], []
    for step in range(12):
        batch = sample(data, key, jnp.int32(step))
        assert batch.labeled_images.shape == (b_l, 6, 6, C)
        assert batch.labels.shape == (b_l,)
        assert batch.unlabeled_images.shape == (b_u, 6, 6, C)
        assert batch.labeled_images.dtype == jnp.float32
        assert batch.unlabeled_images.dtype == jnp.float32
        lab = _recover(np.asarray(batch.labeled_images))
        unl = _recover(np.asarray(batch.unlabeled_images))
        assert np.all((lab >= 0) & (lab < LAB_POOL))
        assert np.all((unl >= 100) & (unl < 100 + UNL_POOL))
        np.testing.assert_array_equal(np.asarray(batch.labels), 7 * lab % 10)
        lab_seen.append(lab)
        unl_seen.append(unl - 100)
    lab_stream = np.concatenate(lab_seen)  # 12 b_l: b_l epochs of 12
    unl_stream = np.concatenate(unl_seen)  # 60 = 3 epochs of 20
    for e in lab_stream.reshape(b_l, LAB_POOL):
        np.testing.assert_array_equal(np.sort(e), np.arange(LAB_POOL))
    for e in unl_stream.reshape(3, UNL_POOL):
        np.testing.assert_array_equal(np.sort(e), np.arange(UNL_POOL))


def test_sample_batch_differs_between_steps_and_keys():
    data = _device_data()
    sample = jax.jit(functools.partial(sample_batch, spec=SamplerSpec(
        labeled_batch_size=4, unlabeled_batch_size=8, translate=1, flip=True)))
    a = sample(data, jax.random.PRNGKey(1), jnp.int32(2))
    c = sample(data, jax.random.PRNGKey(1), jnp.int32(3))
    d = sample(data, jax.random.PRNGKey(2), jnp.int32(2))
    for other in (c, d):
        assert not np.array_equal(a.unlabeled_images, other.unlabeled_images)


def test_sharded_unlabeled_pool_is_read_once_per_epoch_by_every_device():
    """unlabeled_placement='sharded' over 4 devices: device d holds rows [5d, 5d + 5) of
    the pool and, over 5 steps of 2 images each, draws each of its rows exactly twice
    (two epochs)."""
    from jax.sharding import PartitionSpec as P

    from meta_semi_jax.parallel import AXIS, make_mesh

    data = _device_data()
    assert jax.device_count() >= 4  # conftest.py sets 4
    mesh = make_mesh(jax.devices()[:4])
    spec = DeviceData(labeled_images=P(), labeled_labels=P(), unlabeled_images=P(AXIS),
                      mean=P(), std=P())

    def draw(data, step):
        batch = sample_batch(data, jax.random.PRNGKey(3), step, SamplerSpec(
            labeled_batch_size=4, unlabeled_batch_size=8, translate=0, flip=False,
            unlabeled_placement="sharded"), axis_name=AXIS)
        return batch.unlabeled_images

    fn = jax.jit(jax.shard_map(draw, mesh=mesh, in_specs=(spec, P()), out_specs=P(AXIS),
                               check_vma=False))
    drawn = np.stack([_recover(np.asarray(fn(data, jnp.int32(s)))) - 100 for s in range(5)])
    per_device = drawn.reshape(5, 4, 2).transpose(1, 0, 2).reshape(4, 10)
    for device, values in enumerate(per_device):
        counts = np.bincount(values, minlength=UNL_POOL)
        own = np.arange(5 * device, 5 * device + 5)
        np.testing.assert_array_equal(counts[own], 2)
        assert counts.sum() == counts[own].sum()
