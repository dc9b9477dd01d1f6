"""Meta-Semi on CIFAR-10 with CNN-13 (paper Table 1; Appendix C).

    python -m meta_semi_jax.main --config=configs/cifar10.py:1000 --workdir=DIR

Labels: 1000, 2000 or 4000 (100/200/400 per class). 5,000 training images are held out
for validation; every other training image is unlabeled. Random 4-px translation
(zero fill) and horizontal flip; 600 epochs of 600 steps (45,000 / 75).
Paper's test error (Meta-Semi, CNN-13): 10.27 / 8.42 / 7.05 % for 1000 / 2000 / 4000.
The dataset is read through tfds; prepare it once with
``python -m meta_semi_jax.data prepare cifar10 --data_dir=...``.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "4000") -> ml_collections.ConfigDict:
    return cnn13_config("cifar10", num_labels, num_validation=5000,
                        train_size=50_000)
