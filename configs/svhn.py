"""Meta-Semi on SVHN with CNN-13 (paper Table 3; Appendix C).

    python -m meta_semi_jax.main --config=configs/svhn.py:1000 --workdir=DIR

73,257 training images (tfds ``svhn_cropped``, no "extra"), 1,000 held out for
validation, 500 or 1000 labels. Random 2-px translation only, no flip; 600 epochs
of the 72,257 unlabeled images at 75 per step.
Paper's test error (Meta-Semi, CNN-13): 4.12 / 3.92 % for 500 / 1000.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "1000") -> ml_collections.ConfigDict:
    c = cnn13_config("svhn", num_labels, num_validation=1000,
                     train_size=73_257)
    c.translate, c.flip = 2, False
    return c
