"""Meta-Semi (Wang, Guo, Song, Huang) in JAX/Flax: exact meta-gradients, fast steps.

The pure functions below are the paper's equations; ``train_step`` composes them into
one Meta-Semi update that works with any Flax model following ``TrainState``'s
convention. ``python -m meta_semi_jax.main`` is the training program.
"""
__version__ = "0.1.0"

from meta_semi_jax.algorithms import ALGORITHMS, Algorithm, SSLBatch
from meta_semi_jax.algorithms.common import per_example_loss_fn, pseudo_labels
from meta_semi_jax.augment import augment, normalize
from meta_semi_jax.ema import ema_decay_at, ema_update
from meta_semi_jax.losses import soft_cross_entropy
from meta_semi_jax.meta import (
    Scored,
    finite_difference_scores,
    labeled_gradient,
    last_layer_scores,
    meta_scores,
    meta_weights,
    score_unlabeled,
    scores_jvp,
    scores_per_example,
    unrolled_meta_gradient,
    weighted_loss,
)
from meta_semi_jax.mixup import (
    mixup,
    mixup_labeled_and_unlabeled,
    mixup_with_shuffle,
    sample_mixup_lambda,
)
from meta_semi_jax.state import TrainState, create_train_state
from meta_semi_jax.step import apply_update, train_step

__all__ = [
    "ALGORITHMS", "Algorithm", "SSLBatch", "Scored", "TrainState", "apply_update", "augment",
    "create_train_state", "ema_decay_at", "ema_update", "finite_difference_scores",
    "labeled_gradient", "last_layer_scores", "meta_scores",
    "meta_weights", "mixup", "mixup_labeled_and_unlabeled", "mixup_with_shuffle", "normalize",
    "per_example_loss_fn", "pseudo_labels", "sample_mixup_lambda", "score_unlabeled",
    "scores_jvp",
    "scores_per_example", "soft_cross_entropy", "train_step", "unrolled_meta_gradient",
    "weighted_loss",
]
