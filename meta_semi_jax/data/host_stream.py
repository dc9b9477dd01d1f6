"""An unlabeled pool kept in host memory, for pools that fit in no device's memory.

With ``unlabeled_placement='host'`` the devices hold only each step's unlabeled batch.
The host computes the batch's indices with the very function and keys the on-device
sampler uses for a replicated pool (``epoch_shuffled_indices`` of the step's key), so
the run draws the same images as with the pool on the device, gathers those rows in
numpy and places them, split over the devices (in a multi-host run each process places
only its devices' rows), as this device's share of the batch. The labeled pool, the
augmentation and everything after stay on the device.

The copy is the only host work per step. Dispatch is asynchronous: the host gathers
and sends step ``t + 1``'s batch while the devices still compute step ``t``.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from meta_semi_jax.data.sampler import DeviceData, batch_keys, epoch_shuffled_indices
from meta_semi_jax.parallel import DataParallel
from meta_semi_jax.step import step_keys


@functools.partial(jax.jit, static_argnums=(2, 3))
def unlabeled_batch_indices(run_key: jax.Array, step: jax.Array, batch_size: int,
                            pool_size: int) -> jax.Array:
    """Pool indices of the global unlabeled batch of the step that starts at ``step``:
    those the device sampler draws from a replicated pool."""
    k_data, _ = step_keys(run_key, step)
    return epoch_shuffled_indices(batch_keys(k_data).unlabeled, step, batch_size, pool_size)


class HostStream:
    """Places each step's unlabeled batch (and its hidden labels, for diagnostics) on
    the devices, from ``images``/``labels`` in host memory."""

    def __init__(self, dp: DataParallel, images: np.ndarray, labels: np.ndarray,
                 run_key: jax.Array, batch_size: int):
        self._dp = dp
        self._images, self._labels = images, labels
        self._batch_size = batch_size
        self._cpu = jax.local_devices(backend="cpu")[0]
        self._run_key = jax.device_put(run_key, self._cpu)

    def indices(self, step: int) -> np.ndarray:
        with jax.default_device(self._cpu):
            return np.asarray(unlabeled_batch_indices(
                self._run_key, np.int32(step), self._batch_size, len(self._labels)))

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The unlabeled images and hidden labels of the step that starts at ``step``,
        split over the devices."""
        rows = self.indices(step)
        return self._dp.shard((self._images[rows], self._labels[rows]))

    def with_batch(self, data: DeviceData, step: int) -> DeviceData:
        """``data`` holding the unlabeled batch of the step that starts at ``step``."""
        images, labels = self.batch(step)
        return data.replace(  # type: ignore[attr-defined]  # flax: replace() is not in its stubs
            unlabeled_images=images, unlabeled_labels=labels)
