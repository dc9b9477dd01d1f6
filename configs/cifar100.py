"""Meta-Semi on CIFAR-100 with CNN-13 (paper Tables 1, 5, Fig. 3; Appendix C).

    python -m meta_semi_jax.main --config=configs/cifar100.py:10000 --workdir=DIR

Labels: 4000 or 10000 (40/100 per class). 5,000 training images are held out for
validation; every other training image is unlabeled. Random 4-px translation (zero
fill) and horizontal flip; 600 epochs of 600 steps.
Paper's test error (Meta-Semi, CNN-13): 37.61 / 30.51 % for 4000 / 10000.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "10000") -> ml_collections.ConfigDict:
    return cnn13_config("cifar100", num_labels, num_validation=5000,
                        train_size=50_000)
