"""Evaluation: accuracy of the EMA model on a fixed split (paper Sec. 4's protocol
evaluates the EMA model), compiled once and run data-parallel over the devices."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from meta_semi_jax.augment import normalize
from meta_semi_jax.parallel import AXIS, DataParallel
from meta_semi_jax.state import TrainState, model_variables


def device_eval_counts(state: TrainState, images: jax.Array, labels: jax.Array,
                       mask: jax.Array, *, mean: np.ndarray, std: np.ndarray,
                       chunk_size: int) -> dict[str, jax.Array]:
    """Correct predictions of the EMA model (eval-mode BatchNorm) on this device's
    share of a padded split, summed over devices; ``mask`` marks real examples."""
    variables = model_variables(state.ema_params, state.ema_batch_stats)

    def chunk_correct(chunk):
        x, y, m = chunk
        logits = state.apply_fn(variables, normalize(x, mean, std), train=False)
        return jnp.sum((jnp.argmax(logits, -1) == y) * m)

    def reshape(a: jax.Array) -> jax.Array:
        return a.reshape((-1, chunk_size) + a.shape[1:])

    correct = jnp.sum(lax.map(chunk_correct, (reshape(images), reshape(labels), reshape(mask))))
    return {"correct": lax.psum(correct, AXIS), "count": lax.psum(jnp.sum(mask), AXIS)}


def pad_split(images: np.ndarray, labels: np.ndarray, multiple: int) -> tuple[np.ndarray, ...]:
    """Pads a split to a multiple of ``multiple`` examples; the mask is 0 on padding."""
    pad = -len(labels) % multiple
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, mask


class Evaluator:
    """Accuracy (%) of the EMA model on a fixed split (raw images, normalised with
    ``mean``/``std`` on the device), one compiled call per evaluation."""

    def __init__(self, dp: DataParallel, images: np.ndarray, labels: np.ndarray,
                 mean: np.ndarray, std: np.ndarray, eval_batch_size: int):
        chunk = eval_batch_size // dp.num_devices
        self._arrays = dp.shard(pad_split(images, labels, eval_batch_size))
        self._fn = dp.run(functools.partial(device_eval_counts, mean=mean, std=std,
                                            chunk_size=chunk),
                          ("replicated", "sharded", "sharded", "sharded"))
        self._dp = dp

    def accuracy(self, state: TrainState) -> float:
        """Accuracy (%) of ``state``'s EMA model, replicated over ``dp``'s devices (the
        loop passes ``build.Training.evaluated(state)``, whose EMA model is fast-SWA's
        average for the algorithms that keep one)."""
        counts = self._dp.unreplicate(self._fn(state, *self._arrays))
        return 100.0 * float(counts["correct"]) / float(counts["count"])
