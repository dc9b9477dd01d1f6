"""MixUp on the device (paper Sec. 3.3, Eqs. 11-13).

Meta-Semi draws one mixing coefficient per batch from Beta(beta, beta) and uses it as
drawn (no ``max(lam, 1 - lam)``), as in ICT, the paper's reference for CNN-13;
``mixup`` also takes one coefficient per example (MixMatch's way).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mixed(NamedTuple):
    """A mixed batch: inputs and their soft targets."""
    inputs: jax.Array
    targets: jax.Array


def sample_mixup_lambda(key: jax.Array, beta: float) -> jax.Array:
    """``lam ~ Beta(beta, beta)`` (Eqs. 12, 13); beta is Meta-Semi's only hyper-parameter."""
    return jax.random.beta(key, beta, beta)


def mixup(x1: jax.Array, y1: jax.Array, x2: jax.Array, y2: jax.Array,
          lam: jax.Array) -> Mixed:
    """Eq. (11): ``x~ = lam x1 + (1 - lam) x2`` and ``y~ = lam y1 + (1 - lam) y2``.

    ``lam`` is one coefficient for the batch, or one per example (shape ``[B]``).
    """
    def per_example(a: jax.Array) -> jax.Array:
        coefficient = jnp.asarray(lam, a.dtype)
        return coefficient.reshape(coefficient.shape + (1,) * (a.ndim - coefficient.ndim))
    lam_x, lam_y = per_example(x1), per_example(y1)
    return Mixed(lam_x * x1 + (1 - lam_x) * x2, lam_y * y1 + (1 - lam_y) * y2)


class Shuffle(NamedTuple):
    """What ``MixUp(B, Shuffle(B), lam)`` draws: the coefficient and the partners.
    Mixed example j is ``lam * B_j + (1 - lam) * B_order[j]``."""
    lam: jax.Array    # one coefficient for the batch (or one per example, [B])
    order: jax.Array  # [B] int, a permutation of the batch

    def dominant(self) -> jax.Array:
        """``[B]``: for each mixed example the index of its component with weight >= 1/2:
        j itself where ``lam >= 1/2``, else its partner ``order[j]``."""
        return jnp.where(self.lam >= 0.5, jnp.arange(self.order.shape[0]), self.order)


def mixup_with(shuffle: Shuffle, inputs: jax.Array, targets: jax.Array) -> Mixed:
    """``MixUp(B, Shuffle(B), lam)`` with the coefficient and partners of ``shuffle``."""
    return mixup(inputs, targets, inputs[shuffle.order], targets[shuffle.order], shuffle.lam)


def mixup_with_shuffle(key: jax.Array, inputs: jax.Array, targets: jax.Array,
                       lam: jax.Array) -> Mixed:
    """``MixUp(B, Shuffle(B), lam)`` of Eqs. (12) and (13): each example is mixed with
    a partner drawn by one random permutation of the same batch."""
    return mixup_with(Shuffle(lam, jax.random.permutation(key, inputs.shape[0])), inputs,
                      targets)


def labeled_and_unlabeled_shuffles(key: jax.Array, num_labeled: int, num_unlabeled: int,
                                   beta: float, *, mix_labeled: bool = True,
                                   mix_unlabeled: bool = True) -> tuple[Shuffle, Shuffle]:
    """The draws of ``mixup_labeled_and_unlabeled`` with the same arguments: those of
    ``X~`` (over the ``num_labeled`` examples of X) and of ``U~`` (over the
    ``num_labeled + num_unlabeled`` examples of W), a pure function of ``key``."""
    k_lam1, k_perm1, k_lam2, k_perm2 = jax.random.split(key, 4)
    lam1 = sample_mixup_lambda(k_lam1, beta) if mix_labeled else jnp.float32(1.0)
    lam2 = sample_mixup_lambda(k_lam2, beta) if mix_unlabeled else jnp.float32(1.0)
    return (Shuffle(lam1, jax.random.permutation(k_perm1, num_labeled)),
            Shuffle(lam2, jax.random.permutation(k_perm2, num_labeled + num_unlabeled)))


def mixup_labeled_and_unlabeled(key: jax.Array, images: jax.Array, one_hot_labels: jax.Array,
                                unlabeled_images: jax.Array, pseudo_labels: jax.Array,
                                beta: float, *, mix_labeled: bool = True,
                                mix_unlabeled: bool = True) -> tuple[Mixed, Mixed]:
    """Eqs. (12)-(13): ``X~ = MixUp(X, Shuffle(X), lam1)`` and
    ``U~ = MixUp(W, Shuffle(W), lam2)`` with ``W = Concat(X, U)``.

    ``X`` carries one-hot labels and ``U`` its soft pseudo labels; ``U~`` has
    ``|X| + |U|`` examples. ``mix_labeled=False`` / ``mix_unlabeled=False`` (Table 5's
    ablations) set ``lam1`` / ``lam2`` to 1, so ``X~ = X`` / ``U~ = W`` exactly.
    ``labeled_and_unlabeled_shuffles`` gives the coefficients and partners it draws.
    """
    shuffles = labeled_and_unlabeled_shuffles(
        key, images.shape[0], unlabeled_images.shape[0], beta, mix_labeled=mix_labeled,
        mix_unlabeled=mix_unlabeled)
    return mix_labeled_and_unlabeled(shuffles, images, one_hot_labels, unlabeled_images,
                                     pseudo_labels)


def mix_labeled_and_unlabeled(shuffles: tuple[Shuffle, Shuffle], images: jax.Array,
                              one_hot_labels: jax.Array, unlabeled_images: jax.Array,
                              pseudo_labels: jax.Array) -> tuple[Mixed, Mixed]:
    """``X~`` and ``U~`` of ``mixup_labeled_and_unlabeled`` with given draws (those of
    ``labeled_and_unlabeled_shuffles``)."""
    shuffle_x, shuffle_u = shuffles
    w_inputs = jnp.concatenate([images, unlabeled_images])
    w_targets = jnp.concatenate([one_hot_labels, pseudo_labels.astype(one_hot_labels.dtype)])
    return (mixup_with(shuffle_x, images, one_hot_labels),
            mixup_with(shuffle_u, w_inputs, w_targets))
