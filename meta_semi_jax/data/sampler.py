"""Batches drawn on the device from arrays that live on the device.

The training arrays are put on the devices once, as uint8. Each step computes its
batch indices from (key, step) alone, a fresh permutation of each pool per epoch (an
epoch is one pass over that pool: every image is drawn once per epoch), so no host
work happens per step and a resumed run draws the same batches. Each device gathers,
normalises and augments its share of the batch.

The labeled pool is replicated on every device and read as one global stream, each
device taking its contiguous slice. The unlabeled pool is either replicated too (the
same global stream: results do not depend on the device count) or sharded, each
device holding ``1/D`` of it and reading its own shard once per epoch (memory per
device shrinks with D, as STL-10's 100,000 96x96 images need; each host then holds
only its devices' shards). Where the pool fits in no device memory it stays in host
memory (``host_stream.py``): the host gathers each step's unlabeled batch, with the
indices the replicated pool would use, and copies it to the devices ahead of use.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from meta_semi_jax.augment import augment, example_keys, normalize
from meta_semi_jax.batches import DeviceData, SSLBatch
from meta_semi_jax.parallel import axis_index, axis_size, global_example_ids, local_shard


def epoch_shuffled_indices(key: jax.Array, step: int | jax.Array, batch_size: int,
                           pool_size: int) -> jax.Array:
    """Indices of the ``step``-th batch when a pool is read in a new random order each epoch.

    Position ``p = step * batch_size + k`` of the stream is element ``p mod pool_size`` of
    epoch ``p // pool_size``'s permutation (the permutation of key ``fold_in(key, epoch)``).
    A batch larger than the pool (FixMatch's 40 labels in batches of 64) spans several
    epochs; every image is still drawn exactly once per epoch.
    """
    positions = step * batch_size + jnp.arange(batch_size)
    epochs = positions // pool_size
    first = epochs[0]
    # A batch starting anywhere in an epoch covers at most this many epochs (static).
    spanned = (batch_size + pool_size - 2) // pool_size + 1
    permutations = jnp.stack([
        jax.random.permutation(jax.random.fold_in(key, first + e), pool_size)
        for e in range(spanned)])
    return permutations[epochs - first, positions % pool_size]


class BatchKeys(NamedTuple):
    """The keys of one step's sampling: which images, and how each is augmented."""
    labeled: jax.Array
    unlabeled: jax.Array
    labeled_augment: jax.Array
    unlabeled_augment: jax.Array


def batch_keys(key: jax.Array) -> BatchKeys:
    return BatchKeys(*jax.random.split(key, 4))


def unlabeled_indices(key: jax.Array, step: int | jax.Array, batch_size: int,
                      pool_size: int) -> jax.Array:
    """Pool indices of the global unlabeled batch of ``step`` when the pool is read as one
    stream: the replicated pool on the devices, and the pool in host memory
    (``host_stream.py``), which must draw the same images. ``key`` is the step's
    sampling key (``sample_batch``'s)."""
    return epoch_shuffled_indices(batch_keys(key).unlabeled, step, batch_size, pool_size)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How a step draws its batch on the device; static (hashable), part of the program.

    Batch sizes are global; each device takes ``size / num_devices`` examples.
    ``unlabeled_placement`` says what ``DeviceData.unlabeled_images`` holds: the pool
    (``replicated``), this device's shard of the pool (``sharded``), or this device's
    share of the step's unlabeled batch, gathered by the host (``host``).
    ``unlabeled_views > 1`` adds further independent augmentations of the same
    unlabeled images (``SSLBatch.extra_unlabeled_views``); the first view is the same
    for any number of views.
    """
    labeled_batch_size: int
    unlabeled_batch_size: int
    translate: int
    flip: bool
    pad_mode: str = "zero"
    unlabeled_placement: str = "replicated"
    unlabeled_views: int = 1


def sample_batch(data: DeviceData, key: jax.Array, step: int | jax.Array, spec: SamplerSpec,
                 axis_name: str | None = None) -> SSLBatch:
    """This device's share of the step's global batch, drawn as ``spec`` says,
    normalised and augmented."""
    k_lab, k_unl, k_aug_lab, k_aug_unl = batch_keys(key)
    lab_idx = local_shard(epoch_shuffled_indices(
        k_lab, step, spec.labeled_batch_size, data.labeled_images.shape[0]), axis_name)
    # unl_idx: rows of data.unlabeled_images; pool_ids: the same images in the global pool.
    pool_ids: jax.Array | None
    if spec.unlabeled_placement == "host":
        unl_idx, pool_ids = jnp.arange(data.unlabeled_images.shape[0]), None
    elif spec.unlabeled_placement == "sharded":
        shard_size = data.unlabeled_images.shape[0]
        unl_idx = epoch_shuffled_indices(
            jax.random.fold_in(k_unl, axis_index(axis_name)), step,
            spec.unlabeled_batch_size // axis_size(axis_name), shard_size)
        pool_ids = axis_index(axis_name) * shard_size + unl_idx
    else:
        unl_idx = pool_ids = local_shard(unlabeled_indices(
            key, step, spec.unlabeled_batch_size, data.unlabeled_images.shape[0]), axis_name)

    def prepare(images: jax.Array, aug_key: jax.Array) -> jax.Array:
        keys = example_keys(jax.random.fold_in(aug_key, step),
                            global_example_ids(images.shape[0], axis_name))
        return augment(keys, normalize(images, data.mean, data.std), translate=spec.translate,
                       flip=spec.flip, pad_mode=spec.pad_mode)

    unlabeled = data.unlabeled_images[unl_idx]
    extra_views = None
    if spec.unlabeled_views > 1:
        extra_views = jnp.stack([prepare(unlabeled, jax.random.fold_in(k_aug_unl, view))
                                 for view in range(1, spec.unlabeled_views)])
    hidden = None if data.unlabeled_labels is None else data.unlabeled_labels[unl_idx]
    return SSLBatch(labeled_images=prepare(data.labeled_images[lab_idx], k_aug_lab),
                    labels=data.labeled_labels[lab_idx],
                    unlabeled_images=prepare(unlabeled, k_aug_unl),
                    hidden_labels=hidden, extra_unlabeled_views=extra_views,
                    unlabeled_ids=pool_ids)
