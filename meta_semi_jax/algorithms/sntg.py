"""Smooth Neighbors on Teacher Graphs (Luo, Zhu, Li, Ren & Zhang, CVPR 2018) in its
Mean Teacher form, "MT + SNTG": Mean Teacher plus a contrastive loss on the student's
features over a graph that the teacher's predicted classes define.

Loss: ``mean CE(f(x), y) + w(t) * (mean_u ||softmax f(aug1(u)) - softmax f_ema(aug2(u))||^2 / C
+ lambda * mean_{(i, j) in S} l_G(h_i, h_j, W_ij))``, where the first two terms are
``mean_teacher.py``'s, unchanged, and
``l_G = d_ij^2`` if ``W_ij = 1`` and ``max(0, m - d_ij)^2`` if ``W_ij = 0``.

- Graph: ``W_ij = 1`` when ``yhat_i = yhat_j``; ``yhat`` is the true label of a labeled
  image and the teacher's predicted class (argmax of its logits on the second view, the
  consistency target's) of an unlabeled one. No gradient goes through ``W``.
- Features: ``h`` is the student's input to its classifier (the models sow it as
  ``intermediates/features``: CNN-13's 128 globally pooled features), from the same
  train-mode pass as its logits, not normalised. ``d_ij^2 = mean_k (h_ik - h_jk)^2``
  (the mean over the features, as SNTG's code computes it), ``d_ij = sqrt(d_ij^2)``
  (gradient 0 where ``d_ij = 0``).
- Pairs ``S``: the nodes are the student pass's images of the global batch, in the
  order ``Concat(X, U)`` (every device's labeled images, then every device's unlabeled
  ones). ``p = jax.random.permutation(fold_in(key, PAIRS_STREAM), N)`` of the global
  ``N`` nodes, from the step's ``key`` (equal on every device), pairs ``p[k]`` with
  ``p[k + N // 2]`` for ``k < N // 2`` (disjoint pairs, half the batch; with ``N`` odd
  one node sits out). Every device computes the graph term on the gathered features and
  adds ``1 / num_devices`` of it, so it does not depend on the device count.

Where it comes from. SNTG's public code (github.com/xinmei9322/SNTG at 2bd34cb, Theano:
its Pi-model and Temporal Ensembling versions), ``train_emb.py``: the features
``net_em`` are the global pool feeding the dense classifier (l. 453); the graph labels
are the true labels merged with the teacher's argmax (``target_hard`` l. 758 / 765,
``merge`` l. 767-773, ``merge = True`` in ``config.py`` l. 76); the pairs are the first
and second halves of the shuffled mini-batch of 100 (l. 775-779, shuffle l. 550);
``emb_eucd2`` is the mean over the features, and the contrastive terms are averaged
over the pairs (l. 775-787); the term is added as ``unsup_weight * emb_loss *
coeff_embed`` (l. 788): lambda times the ramped consistency weight ``w(t)`` (l. 920),
with its ramp-up and its ``num_labels / num_train_images`` scaling (l. 697-699).
``config.py``: ``coeff_embed = 0.4`` (l. 75, commented "default 1.0"), ``margin =
1.0`` (l. 77). The Mean Teacher version is not public; SNTG's first author wrote
(xinmei9322/SNTG issue #1, 2019) that it is Mean Teacher's public code with Mean
Teacher's hyper-parameters, its ramp-up included, plus SNTG's own. So the recipe is
Mean Teacher's (``mean_teacher.py``: ``weight``, ``rampup_steps``, ``teacher_bn_mode``,
``noisy_network``, ``ema_warmup``) plus ``graph_weight`` (lambda) and ``margin`` (m).

The factory asks for two unlabeled views: the student's and the teacher's.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from meta_semi_jax.algorithms.common import (
    Algorithm,
    Gradients,
    SSLBatch,
    device_key,
    forward_with_features,
    global_mean,
    gradients_of,
    psum_if,
    ramped_weight,
    teacher_on_clean_images,
)
from meta_semi_jax.losses import soft_cross_entropy, softmax_mse
from meta_semi_jax.parallel import axis_size, gather_global
from meta_semi_jax.state import TrainState

# Folded into the step's key for the pairs: no device index (``device_key``) reaches it.
PAIRS_STREAM = 0x5A7E


def neighbour_pairs(key: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
    """The ``num_nodes // 2`` disjoint pairs ``(p[k], p[k + num_nodes // 2])`` of a random
    permutation ``p`` of the nodes drawn from ``key``: two ``[num_nodes // 2]`` index arrays."""
    half = num_nodes // 2
    permutation = jax.random.permutation(key, num_nodes)
    return permutation[:half], permutation[half:2 * half]


def graph_loss(features: jax.Array, graph_labels: jax.Array, key: jax.Array,
               margin: float) -> tuple[jax.Array, jax.Array]:
    """SNTG's contrastive loss on the teacher graph, averaged over the pairs drawn from
    ``key`` (``neighbour_pairs``), and the fraction of the pairs that are neighbours.

    ``features`` ``[N, D]``; ``graph_labels`` ``[N]`` int: the true class of a labeled
    node, the teacher's predicted class of an unlabeled one. A pair of the same class is
    pulled together (``d^2``), one of different classes pushed apart until ``d >= margin``
    (``max(0, margin - d)^2``), with ``d^2`` the mean squared difference of the features.
    """
    first, second = neighbour_pairs(key, features.shape[0])
    squared = jnp.mean(jnp.square(features[first] - features[second]), axis=-1)
    # sqrt with a zero gradient at 0, where the unselected branch would otherwise give NaN.
    positive = squared > 0
    distance = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    neighbours = graph_labels[first] == graph_labels[second]
    terms = jnp.where(neighbours, squared, jnp.square(jnp.maximum(margin - distance, 0.0)))
    return jnp.mean(terms), jnp.mean(neighbours.astype(terms.dtype))


def make(num_classes: int, *, weight: float, rampup_steps: int, teacher_bn_mode: str,
         noisy_network: bool, ema_warmup: bool, graph_weight: float,
         margin: float) -> Algorithm:
    """MT + SNTG: Mean Teacher (``weight``, ``rampup_steps``, ``teacher_bn_mode``,
    ``noisy_network``, ``ema_warmup`` as ``mean_teacher.make``'s) plus the graph term with
    weight ``graph_weight`` (lambda, relative to the ramped consistency weight) and
    ``margin`` (m, in units of the root-mean-square feature difference).

    Metrics: ``loss``, ``labeled_loss``, ``consistency_loss``, ``consistency_weight`` (as
    Mean Teacher's), ``graph_loss`` (the unweighted mean of ``l_G`` over the pairs) and
    ``neighbour_fraction`` (the fraction of the pairs that are neighbours).
    """
    def gradients(state: TrainState, batch: SSLBatch, key: jax.Array,
                  axis_name: str | None = None) -> Gradients:
        # Mean Teacher's noise keys, per device; the pairs from the step's key.
        k_student, k_teacher = jax.random.split(device_key(key, axis_name))
        k_pairs = jax.random.fold_in(key, PAIRS_STREAM)
        views = batch.unlabeled_views()
        teacher = teacher_on_clean_images(state, views[1], batch.labeled_images,
                                          teacher_bn_mode, rng=k_teacher)
        consistency_targets = jax.nn.softmax(teacher.logits)
        labeled_targets = jax.nn.one_hot(batch.labels, num_classes)
        w = ramped_weight(state, weight, rampup_steps, "sigmoid")
        num_labeled = batch.labeled_images.shape[0]
        global_labels, global_predicted = gather_global(
            (batch.labels.astype(jnp.int32), jnp.argmax(teacher.logits, -1).astype(jnp.int32)),
            axis_name)
        graph_labels = jnp.concatenate([global_labels, global_predicted])

        def objective(params: Any):
            logits, features, batch_stats = forward_with_features(
                state, params, jnp.concatenate([batch.labeled_images, views[0]]), rng=k_student)
            supervised = global_mean(soft_cross_entropy(logits[:num_labeled], labeled_targets),
                                     axis_name)
            consistency = global_mean(softmax_mse(logits[num_labeled:], consistency_targets),
                                      axis_name)
            global_x, global_u = gather_global(
                (features[:num_labeled], features[num_labeled:]), axis_name)
            graph, neighbours = graph_loss(jnp.concatenate([global_x, global_u]),
                                           graph_labels, k_pairs, margin)
            # Every device holds the whole graph term: each adds its share.
            graph_share = graph / axis_size(axis_name)
            loss = supervised + w * (consistency + graph_weight * graph_share)
            return loss, (batch_stats, (supervised, consistency, graph, neighbours))

        def metrics(aux):
            supervised, consistency, graph, neighbours = aux
            return {"labeled_loss": psum_if(supervised, axis_name),
                    "consistency_loss": psum_if(consistency, axis_name),
                    "consistency_weight": w,
                    "graph_loss": graph,
                    "neighbour_fraction": neighbours}

        return gradients_of(objective, state, metrics, axis_name,
                            ema_batch_stats=teacher.batch_stats)
    return Algorithm(gradients, unlabeled_views=2, noisy_network=noisy_network,
                     ema_warmup=ema_warmup)
