"""Diagnostics of Eq. (9)'s selection: which pseudo labels do the meta scores keep?

Two measurements, both from the unlabeled set's hidden labels (which reach no loss):

* ``SelectionCounts``: the training steps' own selection. Each step counts
  (``common.pseudo_label_diagnostics``, on the device) the correct and known pseudo
  labels among all of U and among the examples of U~ that Eq. (9) selected / rejected,
  each example of U~ credited to its dominant component (the one with MixUp weight
  >= 1/2). The loop sums the counts on the devices over all steps between two
  evaluations and records them as accuracies (``pseudo_label_accuracy``,
  ``selected_pseudo_label_accuracy``, ``rejected_pseudo_label_accuracy``) and counts
  (``..._count``).
* ``SelectionProbe``: at each evaluation, the meta scores ``s_j`` of a fixed sample of
  unlabeled examples with nothing mixed (lambda = 1), each chunk of the sample scored
  as the unlabeled batch of a step against a labeled batch (``probe_metrics`` says
  what it records): does ``s_j >= 0`` pick out the correct pseudo labels, and better
  than the teacher's own confidence does?

And the mechanism itself, on a trained model (``labeled_as_unlabeled``): labeled images
presented as unlabeled, once with their true label and once with each wrong one.
``python -m meta_semi_jax.selection DIR`` prints it for a run's last checkpoint.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax import lax

from meta_semi_jax import data as data_lib
from meta_semi_jax.algorithms import meta_semi
from meta_semi_jax.algorithms.common import COUNT_PREFIX, Algorithm, UnmixedScores
from meta_semi_jax.augment import normalize
from meta_semi_jax.batches import SSLBatch
from meta_semi_jax.data import SSLData
from meta_semi_jax.models import create_model
from meta_semi_jax.parallel import AXIS, DataParallel, local_shard
from meta_semi_jax.state import TrainState

# selection_agreement: a cheaper meta_grad's Eq. (9) selections that the exact score
# shares (``log_selection_agreement``); its "accuracy" is the agreement in %.
COUNTED = ("pseudo_label", "selected_pseudo_label", "rejected_pseudo_label",
           "selection_agreement")


def accuracies(counts: dict[str, int]) -> dict[str, float | None]:
    """``<name>_accuracy`` (%, None without a known label) and ``<name>_count`` (examples
    with a known label) for each ``<name>`` of ``COUNTED`` in ``counts`` (the
    ``count/<name>_correct`` and ``count/<name>_known`` sums)."""
    result: dict[str, float | None] = {}
    for name in COUNTED:
        known = counts.get(f"{COUNT_PREFIX}{name}_known")
        if known is None:
            continue
        correct = counts[f"{COUNT_PREFIX}{name}_correct"]
        result[f"{name}_accuracy"] = 100.0 * correct / known if known else None
        result[f"{name}_count"] = known
    return result


def _add(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: a[k] + b[k] for k in a}


class SelectionCounts:
    """The steps' ``count/...`` metrics since the last evaluation, summed on the devices
    by one small compiled addition per step (no transfer to the host); ``take`` turns
    them into ``accuracies`` at an evaluation and starts again from zero. ``saved``: the
    sums of a checkpoint (``on_host``), so that a resumed run records what an
    uninterrupted one does."""

    def __init__(self, dp: DataParallel, saved: dict[str, int] | None = None):
        self._dp = dp
        self._add = dp.run(_add, ("replicated", "replicated"), donate_argnums=(0,))
        self._sums: dict[str, jax.Array] | None = (
            dp.replicate({k: np.int32(v) for k, v in saved.items()}) if saved else None)

    def add(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Adds the counts of a step's ``metrics`` to the sums; returns the others."""
        counts = {k: v for k, v in metrics.items() if k.startswith(COUNT_PREFIX)}
        if counts:
            self._sums = counts if self._sums is None else self._add(self._sums, counts)
        return {k: v for k, v in metrics.items() if not k.startswith(COUNT_PREFIX)}

    def on_host(self) -> dict[str, int]:
        """The sums so far, as plain integers."""
        if self._sums is None:
            return {}
        return {k: int(v) for k, v in self._dp.unreplicate(self._sums).items()}

    def take(self) -> dict[str, float | None]:
        """``accuracies`` of the sums since the last call; the sums start again at zero."""
        result = accuracies(self.on_host())
        self._sums = None
        return result


def auroc(scores: Any, positives: Any) -> float:
    """Area under the ROC curve of ``scores`` for the events ``positives``: the
    probability that a random positive scores above a random negative, a tie counting
    one half (the Mann-Whitney U statistic over ``n_pos * n_neg``, from average ranks).
    NaN without positives or without negatives."""
    scores = np.asarray(scores, np.float64).ravel()
    positives = np.asarray(positives, bool).ravel()
    num_pos = int(positives.sum())
    num_neg = positives.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    _, first, sizes = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (sizes + 1) / 2.0, sizes)  # 1-based, ties averaged
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2.0)
                 / (num_pos * num_neg))


def probe_metrics(scores: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
                  student: np.ndarray | None = None) -> dict[str, float | None]:
    """What the probe records, from the scores ``s_j``, the teacher's probabilities, the
    true labels of its sample and the model's (student's) probabilities (None where a
    value is undefined):

    ``probe_size``; ``probe_pseudo_label_accuracy`` (%, the teacher's argmax);
    ``probe_selected`` (share with ``s_j >= 0``, Eq. 9); ``probe_selected_if_correct`` /
    ``probe_selected_if_wrong`` (% of the correct / wrong pseudo labels with
    ``s_j >= 0``); ``probe_score_auroc`` (AUROC of ``s_j`` for "the pseudo label is
    correct"; 0.5 is chance), and the same within the half of the sample where the
    teacher is most confident (``..._high_confidence``) and the other half
    (``..._low_confidence``), split by the rank of the teacher's maximum probability
    (ties in input order) so the halves have equal sizes also when many probabilities
    round to 1; ``probe_confidence_auroc`` (AUROC of that maximum probability, the
    selection rule the scores compete with). With ``student``:
    ``probe_sharper_target`` (share of the sample whose pseudo label is more confident,
    by maximum probability, than the model's prediction), ``probe_selected_if_sharper``
    / ``probe_selected_if_softer`` (% of those / the others with ``s_j >= 0``) and
    ``probe_score_auroc_sharper`` (AUROC of ``s_j`` for a sharper target): whether
    Eq. (9) selects the targets that would make the model more confident."""
    correct = np.argmax(probabilities, -1) == labels
    confidence = np.max(probabilities, -1)
    selected = scores >= 0
    high = np.zeros(len(scores), bool)
    high[np.argsort(confidence, kind="stable")[len(scores) // 2:]] = True

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return 100.0 * float(np.mean(mask[of])) if of.any() else float("nan")

    values = {
        "probe_size": float(len(scores)),
        "probe_pseudo_label_accuracy": 100.0 * float(np.mean(correct)),
        "probe_selected": float(np.mean(selected)),
        "probe_selected_if_correct": share(selected, correct),
        "probe_selected_if_wrong": share(selected, ~correct),
        "probe_score_auroc": auroc(scores, correct),
        "probe_score_auroc_high_confidence": auroc(scores[high], correct[high]),
        "probe_score_auroc_low_confidence": auroc(scores[~high], correct[~high]),
        "probe_confidence_auroc": auroc(confidence, correct),
    }
    if student is not None:
        sharper = confidence > np.max(student, -1)
        values.update({"probe_sharper_target": float(np.mean(sharper)),
                       "probe_selected_if_sharper": share(selected, sharper),
                       "probe_selected_if_softer": share(selected, ~sharper),
                       "probe_score_auroc_sharper": auroc(scores, sharper)})
    return {k: v if np.isfinite(v) else None for k, v in values.items()}


def device_probe_scores(state: TrainState, unlabeled: jax.Array, labeled: jax.Array,
                        labels: jax.Array, *, mean: np.ndarray, std: np.ndarray,
                        unmixed_scores: UnmixedScores) -> dict[str, jax.Array]:
    """The per-device program over ``AXIS``: for each chunk ``c`` (leading axis) of the
    replicated raw images, this device's share of the batch ``X = labeled[c]`` (with
    ``labels[c]``), ``U = unlabeled[c]``, normalised and not augmented, and
    ``unmixed_scores`` of it: the global scores ``[C, B_u]``, the teacher's and the
    model's probabilities ``[C, B_u, K]``."""
    def chunk(images: tuple[jax.Array, jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
        u, x, y = images
        batch = SSLBatch(labeled_images=local_shard(normalize(x, mean, std), AXIS),
                         labels=local_shard(y, AXIS),
                         unlabeled_images=local_shard(normalize(u, mean, std), AXIS))
        return unmixed_scores(state, batch, AXIS)

    scores, teacher, student = lax.map(chunk, (unlabeled, labeled, labels))
    return {"scores": scores, "teacher": teacher, "student": student}


class SelectionProbe:
    """``probe_metrics`` of the model at an evaluation, on the first ``size`` unlabeled
    examples with a known label, in chunks of ``unlabeled_batch_size`` (the last one
    filled up from the sample's start; those repeats are not counted), chunk ``c``
    scored against the labeled batch of examples ``c * B_l ...`` (cyclically) of the
    labeled set, so that the sample sees every labeled example. One compiled program."""

    def __init__(self, dp: DataParallel, ssl: SSLData, unmixed_scores: UnmixedScores,
                 size: int, labeled_batch_size: int, unlabeled_batch_size: int):
        sample = np.flatnonzero(ssl.unlabeled_labels >= 0)[:size]
        self.size = len(sample)
        chunks = -(-self.size // unlabeled_batch_size)
        rows = np.resize(sample, chunks * unlabeled_batch_size)
        labeled = np.arange(chunks * labeled_batch_size) % len(ssl.labeled_labels)

        def by_chunk(a: np.ndarray) -> np.ndarray:
            return a.reshape((chunks, -1) + a.shape[1:])
        self._labels = ssl.unlabeled_labels[sample]
        self._arrays = dp.replicate((by_chunk(ssl.unlabeled_images[rows]),
                                     by_chunk(ssl.labeled_images[labeled]),
                                     by_chunk(ssl.labeled_labels[labeled])))
        self._fn = dp.run(functools.partial(device_probe_scores, mean=ssl.mean, std=ssl.std,
                                            unmixed_scores=unmixed_scores),
                          ("replicated",) * 4)
        self._dp = dp

    def scores(self, state: TrainState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sample's scores ``[N]``, the teacher's and the model's probabilities
        ``[N, K]`` under ``state`` (replicated over ``dp``'s devices)."""
        out = self._dp.unreplicate(self._fn(state, *self._arrays))

        def flat(a: np.ndarray) -> np.ndarray:
            return np.asarray(a).reshape((-1,) + np.shape(a)[2:])[:self.size]
        return flat(out["scores"]), flat(out["teacher"]), flat(out["student"])

    def metrics(self, state: TrainState) -> dict[str, float | None]:
        """``probe_metrics`` of ``state`` (replicated over ``dp``'s devices)."""
        scores, teacher, student = self.scores(state)
        return probe_metrics(scores, teacher, self._labels, student)


def selection_probe(config: ml_collections.ConfigDict, dp: DataParallel, ssl: SSLData,
                    algorithm: Algorithm) -> SelectionProbe | None:
    """The run's ``SelectionProbe``, or None: with ``selection_probe_size=0``, for an
    algorithm without meta scores, or without an unlabeled example of known label."""
    if (config.selection_probe_size == 0 or algorithm.unmixed_scores is None
            or not np.any(ssl.unlabeled_labels >= 0)):
        return None
    return SelectionProbe(dp, ssl, algorithm.unmixed_scores, config.selection_probe_size,
                          config.labeled_batch_size, config.unlabeled_batch_size)


@functools.partial(jax.jit, static_argnums=(5,))
def _unmixed_scores(state: TrainState, labeled: jax.Array, labels: jax.Array,
                    unlabeled: jax.Array, targets: jax.Array,
                    settings: meta_semi.Settings) -> jax.Array:
    batch = SSLBatch(labeled_images=labeled, labels=labels, unlabeled_images=unlabeled)
    return meta_semi.unmixed_scores(state, batch, settings, targets)


def labeled_as_unlabeled(state: TrainState, images: np.ndarray, labels: np.ndarray,
                         settings: meta_semi.Settings, folds: int = 5,
                         held_out: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (10)'s scores of labeled images presented as the unlabeled batch with one-hot
    targets, with nothing mixed (``meta_semi.unmixed_scores``): ``[N]`` with their true
    labels and ``[N, K - 1]`` with each wrong label. The labeled set (``images``
    normalised, in a fixed random order) is cut into ``folds`` folds; each fold in turn
    is U against all the other labeled images as X, so no image is scored against a
    labeled gradient it is part of (``held_out=False``: against the whole labeled set,
    the fold's own images among them, as Meta-Semi's U~ holds the images of X).
    ``state`` is one device's, its model without a device axis."""
    k = settings.num_classes
    order = np.random.default_rng(0).permutation(len(labels))
    true = np.zeros(len(labels))
    wrong = np.zeros((len(labels), k - 1))
    for fold in np.array_split(order, folds):
        rest = np.setdiff1d(order, fold) if held_out else order

        def scores(targets: np.ndarray, fold: np.ndarray = fold,
                   rest: np.ndarray = rest) -> np.ndarray:
            return np.asarray(_unmixed_scores(state, images[rest], labels[rest],
                                              images[fold], np.eye(k)[targets], settings))
        true[fold] = scores(labels[fold])
        for shift in range(1, k):
            wrong[fold, shift - 1] = scores((labels[fold] + shift) % k)
    return true, wrong


def restore_run(workdir: str) -> tuple[ml_collections.ConfigDict, SSLData, TrainState]:
    """A finished (or checkpointed) run's config, data split and the train state of its
    latest checkpoint, on the host, with its model without a device axis."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    raw = data_lib.load_raw(config)
    ssl = data_lib.split_dataset(raw, data_lib.split_indices(config, raw))
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"))
    saved = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
    manager.close()
    model = create_model(config.model, ssl.num_classes)
    state = TrainState.create(apply_fn=model.apply, params=saved["params"],
                              tx=optax.identity(), batch_stats=saved["batch_stats"],
                              ema_params=saved["ema_params"],
                              ema_batch_stats=saved["ema_batch_stats"])
    return config, ssl, state.replace(step=int(saved["step"]))


def mechanism_report(workdir: str) -> dict[str, Any]:
    """``labeled_as_unlabeled`` of a run's latest checkpoint: the share (%) of the
    labeled images selected (``s_j >= 0``, Eq. 9) with their true label and rejected
    (``s_j < 0``) with a wrong one (over all wrong labels), held out of X and, as
    ``..._in_x``, also in X."""
    config, ssl, state = restore_run(workdir)
    settings = meta_semi.Settings(ssl.num_classes, config.beta, config.meta_grad,
                                  config.teacher_bn_mode, config.pseudo_label, config.mixup)
    images = np.asarray(normalize(jax.numpy.asarray(ssl.labeled_images), ssl.mean, ssl.std))
    report: dict[str, Any] = {"step": int(state.step), "labeled_images": len(images)}
    for held_out, suffix in ((True, ""), (False, "_in_x")):
        true, wrong = labeled_as_unlabeled(state, images, ssl.labeled_labels, settings,
                                           held_out=held_out)
        report[f"true_label_selected{suffix}"] = 100.0 * float(np.mean(true >= 0))
        report[f"wrong_label_rejected{suffix}"] = 100.0 * float(np.mean(wrong < 0))
    return report


if __name__ == "__main__":
    print(json.dumps(mechanism_report(sys.argv[1])))
