"""Image augmentation and normalisation inside the jitted step, vectorised per example.

Appendix C: random translation (4 px on CIFAR, 2 px on SVHN) followed by a random
horizontal flip (not on SVHN). The uncovered border is filled either with zeros
*after* normalisation, i.e. with the dataset mean (``pad_mode="zero"``, the ICT /
Mean Teacher lineage the CNN-13 experiments follow), or by reflecting the image
(``pad_mode="reflect"``, MixMatch's choice for WRN and STL-10, which keeps image
statistics at the border).

Each example draws its randomness from its own key, so an example is augmented the
same way whichever device holds it (``example_keys``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: jax.typing.ArrayLike,
              std: jax.typing.ArrayLike) -> jax.Array:
    """Channel-wise ``(x - mean) / std`` of raw (integer) images, as float32."""
    return (images.astype(jnp.float32) - mean) / std


def example_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
    """One key per example, ``fold_in(key, id)`` of its position in the global batch."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)


PAD_MODES: dict[str, str] = {"zero": "constant", "reflect": "reflect"}


def translate_image(key: jax.Array, image: jax.Array, max_shift: int,
                    pad_mode: str = "zero") -> jax.Array:
    """Shifts one HWC image by a random offset in ``[-max_shift, max_shift]`` on both
    spatial axes, filling the uncovered border as ``pad_mode`` says."""
    if max_shift == 0:
        return image
    height, width, channels = image.shape
    padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                     mode=PAD_MODES[pad_mode])
    offset = jax.random.randint(key, (2,), 0, 2 * max_shift + 1)
    return jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (height, width, channels))


def flip_image(key: jax.Array, image: jax.Array) -> jax.Array:
    """Flips one HWC image left-right with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


def augment_image(key: jax.Array, image: jax.Array, *, translate: int, flip: bool,
                  pad_mode: str = "zero") -> jax.Array:
    """Random translation, then (optionally) a random horizontal flip."""
    k_translate, k_flip = jax.random.split(key)
    image = translate_image(k_translate, image, translate, pad_mode)
    return flip_image(k_flip, image) if flip else image


def augment(keys: jax.Array, images: jax.Array, *, translate: int, flip: bool,
            pad_mode: str = "zero") -> jax.Array:
    """``augment_image`` over a NHWC batch, one key per example."""
    return jax.vmap(lambda k, x: augment_image(k, x, translate=translate, flip=flip,
                                               pad_mode=pad_mode))(keys, images)
