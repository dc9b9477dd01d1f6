"""SVHN with CNN-13 (paper Table 3; Appendix C). Meta-Semi by default:

    python -m meta_semi_jax.main --config=configs/svhn.py:1000 --workdir=DIR

73,257 training images (tfds ``svhn_cropped``, no "extra"), 1,000 held out for
validation, 500 or 1000 labels. Random 2-px translation only, no flip; 600 epochs of
the 72,257 unlabeled images at 75 per step (964 steps an epoch). ICT's SVHN alpha 0.1
and MixMatch's SVHN lambda_u 250 for those algorithms (``config.<algorithm>``).
Paper's test error, 500 / 1000 labels: Meta-Semi 4.12 / 3.92 %, Meta-Semi + ICT
3.98 / 3.77 %, ICT 4.23 / 3.89 %, Mean Teacher 4.18 / 3.95 %, Pi-model 6.65 / 4.82 %.
Measured on one GPU (NVIDIA H200, jax 0.11.2; experiments/results/gpu_check_h200):
the 578,056 steps take 1.54 h for Meta-Semi in float32 (9.6 ms/step) and 1.18 h in
bfloat16 (7.3 ms), ICT 1.15 / 0.85 h, counting the steps alone (not evaluations or
checkpoints). The paper's ICT run took 12.6 h on a Titan Xp (Table 4).
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "1000") -> ml_collections.ConfigDict:
    c = cnn13_config("svhn", num_labels, num_validation=1000, train_size=73_257,
                     mixmatch_weight=250.0, ict_alpha=0.1,
                     # vat_tf's 3.5 on pixels in [-0.5, 0.5], in units of SVHN's channel
                     # std (about 0.2 of that range): 3.5 / 0.2.
                     vat_epsilon=17.5)
    c.translate, c.flip = 2, False
    return c
