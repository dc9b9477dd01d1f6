"""Evaluation of the EMA model on a fixed split (paper Sec. 4's protocol evaluates the
EMA model), compiled once and run data-parallel over the devices.

One implementation serves the training loop's validation and test accuracies and the
``evaluate`` program's full report: each call computes the confusion matrix (from which
the accuracy, the error and the per-class accuracies follow), the summed cross-entropy
and, for more than ``TOP5_MIN_CLASSES`` classes, the top-5 hits.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from meta_semi_jax.augment import normalize
from meta_semi_jax.parallel import AXIS, DataParallel
from meta_semi_jax.state import TrainState, model_variables

TOP5_MIN_CLASSES = 11  # top-5 accuracy is reported for more than 10 classes


def device_eval_sums(state: TrainState, images: jax.Array, labels: jax.Array,
                     mask: jax.Array, *, mean: np.ndarray, std: np.ndarray, chunk_size: int,
                     num_classes: int) -> dict[str, jax.Array]:
    """The EMA model (eval-mode BatchNorm) on this device's share of a padded split,
    summed over devices: the confusion matrix ``[true, predicted]``, the summed
    cross-entropy and, for many classes, the top-5 hits; ``mask`` marks real examples."""
    variables = model_variables(state.ema_params, state.ema_batch_stats)
    top5 = num_classes >= TOP5_MIN_CLASSES

    def chunk_sums(chunk):
        x, y, m = chunk
        logits = state.apply_fn(variables, normalize(x, mean, std), train=False)
        logits = logits.astype(jnp.float32)
        real = m.astype(jnp.int32)
        truth = jax.nn.one_hot(y, num_classes, dtype=jnp.int32) * real[:, None]
        predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
        sums = {"confusion": truth.T @ predicted,
                "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * m)}
        if top5:
            hits = jnp.any(lax.top_k(logits, 5)[1] == y[:, None], axis=-1)
            sums["top5"] = jnp.sum(hits * real)
        return sums

    def reshape(a: jax.Array) -> jax.Array:
        return a.reshape((-1, chunk_size) + a.shape[1:])

    per_chunk = lax.map(chunk_sums, (reshape(images), reshape(labels), reshape(mask)))
    return jax.tree.map(lambda a: lax.psum(jnp.sum(a, axis=0), AXIS), per_chunk)


def pad_split(images: np.ndarray, labels: np.ndarray, multiple: int) -> tuple[np.ndarray, ...]:
    """Pads a split to a multiple of ``multiple`` examples; the mask is 0 on padding."""
    pad = -len(labels) % multiple
    mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, mask


@dataclasses.dataclass(frozen=True)
class EvalSummary:
    """One evaluation of a model on a split; percentages in 0-100."""
    confusion: np.ndarray  # [true class, predicted class] counts
    loss_sum: float
    top5_hits: int | None  # None for at most 10 classes

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return 100.0 * float(np.trace(self.confusion)) / float(self.count)

    @property
    def per_class_accuracy(self) -> list[float | None]:
        """Accuracy (%) on each true class; None for a class absent from the split."""
        totals = self.confusion.sum(axis=1)
        return [100.0 * float(self.confusion[c, c]) / float(n) if n else None
                for c, n in enumerate(totals)]

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "error": 100.0 - self.accuracy,
                "count": self.count, "mean_loss": self.loss_sum / self.count,
                "top5_accuracy": (None if self.top5_hits is None
                                  else 100.0 * self.top5_hits / self.count),
                "per_class_accuracy": self.per_class_accuracy,
                "confusion_matrix": self.confusion.tolist()}


class Evaluator:
    """The EMA model on a fixed split (raw images, normalised with ``mean``/``std`` on the
    device), one compiled call per evaluation, on any number of devices: each device
    evaluates chunks of ``ceil(eval_batch_size / devices)`` images."""

    def __init__(self, dp: DataParallel, images: np.ndarray, labels: np.ndarray,
                 mean: np.ndarray, std: np.ndarray, eval_batch_size: int, num_classes: int):
        chunk = -(-eval_batch_size // dp.num_devices)
        self._arrays = dp.shard(pad_split(images, labels, chunk * dp.num_devices))
        self._fn = dp.run(functools.partial(device_eval_sums, mean=mean, std=std,
                                            chunk_size=chunk, num_classes=num_classes),
                          ("replicated", "sharded", "sharded", "sharded"))
        self._dp = dp

    def summary(self, state: TrainState) -> EvalSummary:
        """The evaluation of ``state``'s EMA model, replicated over ``dp``'s devices (the
        loop passes ``build.Training.evaluated(state)``, whose EMA model is fast-SWA's
        average for the algorithms that keep one)."""
        sums = jax.device_get(self._dp.unreplicate(self._fn(state, *self._arrays)))
        top5 = sums.get("top5")
        return EvalSummary(confusion=np.asarray(sums["confusion"]),
                           loss_sum=float(sums["loss"]),
                           top5_hits=None if top5 is None else int(top5))

    def accuracy(self, state: TrainState) -> float:
        """Accuracy (%) of ``state``'s EMA model (``summary``)."""
        return self.summary(state).accuracy
