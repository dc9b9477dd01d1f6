"""An unlabeled pool kept in host memory, for pools that fit in no device's memory.

With ``unlabeled_placement='host'`` the devices hold only each step's unlabeled batch.
The host computes the batch's indices with the very function and key the on-device
sampler uses for a replicated pool (``sampler.unlabeled_indices`` of the data key), so
the run draws the same images as with the pool on the device, gathers those rows in
numpy and places them, split over the devices (in a multi-host run each process places
only its devices' rows), as this device's share of the batch. The labeled pool, the
augmentation and everything after stay on the device.

The copy is the only host work per step. Dispatch is asynchronous: the host gathers
and sends step ``t + 1``'s batch while the devices still compute step ``t``.
"""
from __future__ import annotations

import jax
import numpy as np

from meta_semi_jax.batches import DeviceData
from meta_semi_jax.data.sampler import unlabeled_indices
from meta_semi_jax.parallel import DataParallel

# Compiled once per (batch size, pool size); run on the host's CPU.
_host_unlabeled_indices = jax.jit(unlabeled_indices, static_argnums=(2, 3))


class HostStream:
    """Places each step's unlabeled batch (and its hidden labels, for diagnostics) on
    the devices, from ``images``/``labels`` in host memory."""

    def __init__(self, dp: DataParallel, images: np.ndarray, labels: np.ndarray,
                 data_key: jax.Array, batch_size: int):
        """``data_key``: the sampling key of every step (``step.step_keys``)."""
        self._dp = dp
        self._images, self._labels = images, labels
        self._batch_size = batch_size
        self._cpu = jax.local_devices(backend="cpu")[0]
        self._data_key = jax.device_put(data_key, self._cpu)

    def indices(self, step: int) -> np.ndarray:
        with jax.default_device(self._cpu):
            return np.asarray(_host_unlabeled_indices(
                self._data_key, np.int32(step), self._batch_size, len(self._labels)))

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
