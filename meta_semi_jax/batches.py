"""The data a step works on, at the bottom of the layers: the training pools as the
devices hold them (``DeviceData``, read by the sampler) and one device's augmented batch
(``SSLBatch``, made by the sampler and read by every algorithm)."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class DeviceData:
    """Training pools kept on the device (raw uint8 images) and the normalisation.

    ``unlabeled_labels`` (-1 where unknown) are the hidden classes of the unlabeled pool,
    for diagnostics only; ``None`` leaves them out.
    """
    labeled_images: jax.Array
    labeled_labels: jax.Array
    unlabeled_images: jax.Array
    mean: jax.Array
    std: jax.Array
    unlabeled_labels: jax.Array | None = None


@flax.struct.dataclass
class SSLBatch:
    """One device's share of a step's data, already augmented and normalised.

    labeled_images ``[B_l, H, W, C]``, labels ``[B_l]`` int, unlabeled_images ``[B_u, H, W, C]``.
    ``hidden_labels`` ``[B_u]`` (optional; -1 where unknown) are the true classes of the
    unlabeled images: they only feed diagnostics (pseudo-label accuracy), never a loss.
    ``extra_unlabeled_views`` ``[V - 1, B_u, H, W, C]`` (optional) are further random
    augmentations of the same unlabeled images, for algorithms that compare views.
    ``unlabeled_ids`` ``[B_u]`` (optional) are the unlabeled images' indices in the whole
    (global) unlabeled pool, for algorithms that keep a value per example.
    """
    labeled_images: jax.Array
    labels: jax.Array
    unlabeled_images: jax.Array
    hidden_labels: jax.Array | None = None
    extra_unlabeled_views: jax.Array | None = None
    unlabeled_ids: jax.Array | None = None

    def unlabeled_views(self) -> jax.Array:
        """All augmented views of the unlabeled images, ``[V, B_u, H, W, C]``."""
        first = self.unlabeled_images[None]
        if self.extra_unlabeled_views is None:
            return first
        return jnp.concatenate([first, self.extra_unlabeled_views])
