"""On-device augmentation (Appendix C): random translation with zero fill, random
horizontal flip, per-example keys, and channel-wise normalisation."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_semi_jax.augment import augment, example_keys, flip_image, normalize, translate_image

H = W = 9
CENTER = 4


def _one_hot_image(row: int = CENTER, col: int = CENTER, channels: int = 2) -> jax.Array:
    image = np.zeros((H, W, channels), np.float32)
    image[row, col, :] = 1.0
    return jnp.asarray(image)


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), n)


@pytest.mark.parametrize("max_shift", [1, 2])
def test_translate_moves_pixel_by_at_most_max_shift_and_hits_every_offset(max_shift):
    """A single lit pixel stays a single lit pixel, moved by an offset in
    [-max_shift, max_shift]^2; over many keys all (2*max_shift+1)^2 offsets occur."""
    keys = _keys(400)
    image = _one_hot_image()
    out = np.asarray(jax.jit(jax.vmap(
        lambda k: translate_image(k, image, max_shift)))(keys))
    assert out.shape == (400, H, W, 2)
    offsets = set()
    for o in out:
        assert np.count_nonzero(o) == 2  # one pixel, both channels
        rows, cols = np.nonzero(o[..., 0])
        dy, dx = int(rows[0]) - CENTER, int(cols[0]) - CENTER
        assert abs(dy) <= max_shift and abs(dx) <= max_shift
        np.testing.assert_array_equal(o[rows[0], cols[0]], [1.0, 1.0])
        offsets.add((dy, dx))
    assert len(offsets) == (2 * max_shift + 1) ** 2


@pytest.mark.parametrize("max_shift", [1, 3])
def test_translate_fills_uncovered_border_with_zeros(max_shift):
    """A constant image of ones, shifted by the offset the same key gives a lit pixel,
    is ones on the covered (H-|dy|)x(W-|dx|) rectangle and exactly 0 elsewhere; the
    content is the original image shifted (checked with a random image)."""
    keys = _keys(64, seed=1)
    ones = jnp.ones((H, W, 1), jnp.float32)
    rand = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (H, W, 1)), jnp.float32)
    f = jax.jit(jax.vmap(lambda k, x: translate_image(k, x, max_shift), in_axes=(0, None)))
    lit = np.asarray(f(keys, _one_hot_image(channels=1)))
    shifted_ones = np.asarray(f(keys, ones))
    shifted_rand = np.asarray(f(keys, rand))
    for i in range(len(keys)):
        rows, cols = np.nonzero(lit[i, ..., 0])
        dy, dx = int(rows[0]) - CENTER, int(cols[0]) - CENTER
        # out[r, c] = image[r - dy, c - dx] where that is inside the image, else 0.
        expected = np.zeros((H, W, 1), np.float32)
        src = np.asarray(rand)
        for r in range(H):
            for c in range(W):
                if 0 <= r - dy < H and 0 <= c - dx < W:
                    expected[r, c] = src[r - dy, c - dx]
        np.testing.assert_array_equal(shifted_rand[i], expected)
        assert shifted_ones[i].sum() == (H - abs(dy)) * (W - abs(dx))
        assert set(np.unique(shifted_ones[i]).tolist()) <= {0.0, 1.0}


def test_translate_max_shift_zero_is_identity():
    """max_shift=0 returns the image unchanged for every key."""
    image = jnp.asarray(np.random.default_rng(0).normal(size=(H, W, 3)), jnp.float32)
    out = jax.jit(jax.vmap(lambda k: translate_image(k, image, 0)))(_keys(16))
    np.testing.assert_array_equal(out, jnp.broadcast_to(image, out.shape))


def test_flip_is_identity_or_exact_mirror_and_both_occur():
    """flip_image returns either the image or image[:, ::-1] exactly, each for some keys,
    roughly half of the time."""
    image = jnp.asarray(np.random.default_rng(0).normal(size=(H, W, 3)), jnp.float32)
    mirror = np.asarray(image)[:, ::-1, :]
    out = np.asarray(jax.jit(jax.vmap(lambda k: flip_image(k, image)))(_keys(200)))
    same = np.all(out == np.asarray(image), axis=(1, 2, 3))
    flipped = np.all(out == mirror, axis=(1, 2, 3))
    assert np.all(same ^ flipped)
    assert 60 < flipped.sum() < 140


def _batch(n: int = 8, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, H, W, 3)), jnp.float32)


AUGMENT = jax.jit(functools.partial(augment, translate=2, flip=True))


def test_augment_example_depends_only_on_its_own_key_and_image():
    """Changing the key (or the image) of example j changes only example j's output,
    and example i's output equals augment_image on (keys[i], images[i]) alone."""
    keys, images = _keys(8), _batch()
    base = np.asarray(AUGMENT(keys, images))
    j = 3
    changed_j = 0
    for s in range(6):
        other = keys.at[j].set(jax.random.PRNGKey(1000 + s))
        out = np.asarray(AUGMENT(other, images))
        others = np.arange(8) != j
        np.testing.assert_array_equal(out[others], base[others])
        changed_j += not np.array_equal(out[j], base[j])
    assert changed_j >= 4  # 50 equally likely (shift, flip) outcomes: a new key usually differs
    out = np.asarray(AUGMENT(keys, images.at[5].set(0.0)))
    np.testing.assert_array_equal(out[np.arange(8) != 5], base[np.arange(8) != 5])
    for i in (0, 5):
        single = np.asarray(AUGMENT(keys[i:i + 1], images[i:i + 1]))[0]
        np.testing.assert_array_equal(single, base[i])


def test_augment_without_translate_or_flip_is_identity():
    """translate=0, flip=False leaves the batch unchanged."""
    keys, images = _keys(8), _batch()
    out = jax.jit(functools.partial(augment, translate=0, flip=False))(keys, images)
    np.testing.assert_array_equal(out, images)


def test_normalize_is_channelwise_standardisation_in_float32():
    """normalize(x) == (x - mean) / std per channel, as float32, from uint8 input."""
    r = np.random.default_rng(0)
    images = r.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    mean = np.array([120.0, 10.5, 200.25], np.float32)
    std = np.array([60.0, 2.0, 0.5], np.float32)
    out = jax.jit(normalize)(jnp.asarray(images), jnp.asarray(mean), jnp.asarray(std))
    assert out.dtype == jnp.float32
    expected = (images.astype(np.float64) - mean) / std
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-5)


def test_example_keys_are_fold_in_of_id_and_distinct():
    """example_keys gives fold_in(key, id) for each id: distinct keys for distinct ids,
    the same key for the same id whatever its position, new keys for a new base key."""
    key = jax.random.PRNGKey(3)
    ids = jnp.arange(32)
    keys_of = jax.jit(example_keys)  # one program for all three calls; eager ones compile more
    ks = np.asarray(keys_of(key, ids))
    assert len({tuple(k) for k in ks}) == 32
    for i in (0, 7, 31):
        np.testing.assert_array_equal(ks[i], np.asarray(jax.random.fold_in(key, i)))
    permuted = np.asarray(keys_of(key, ids[::-1]))
    np.testing.assert_array_equal(permuted, ks[::-1])
    other = np.asarray(keys_of(jax.random.PRNGKey(4), ids))
    assert not {tuple(k) for k in other} & {tuple(k) for k in ks}


def test_translate_reflect_mode_fills_border_with_mirrored_pixels():
    """pad_mode='reflect': the shifted image equals numpy's reflect-padded image cut at the
    offset a lit pixel reveals for the same key; no zero fill appears."""
    s = 2
    keys = _keys(32, seed=2)
    image = np.random.default_rng(0).uniform(1, 2, (H, W, 1)).astype(np.float32)
    reflect = jax.jit(jax.vmap(lambda k: translate_image(k, jnp.asarray(image), s, "reflect")))
    lit = jax.jit(jax.vmap(lambda k: translate_image(k, _one_hot_image(channels=1), s)))
    out, lit = np.asarray(reflect(keys)), np.asarray(lit(keys))
    padded = np.pad(image, ((s, s), (s, s), (0, 0)), mode="reflect")
    for o, marker in zip(out, lit, strict=True):
        rows, cols = np.nonzero(marker[..., 0])
        dy, dx = int(rows[0]) - CENTER, int(cols[0]) - CENTER
        np.testing.assert_array_equal(o, padded[s - dy:s - dy + H, s - dx:s - dx + W])
        assert np.all(o > 0)
