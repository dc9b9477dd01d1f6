"""CIFAR-100 with CNN-13 (paper Tables 1, 4, 5 and Fig. 3; Appendix C). Meta-Semi by default:

    python -m meta_semi_jax.main --config=configs/cifar100.py:10000 --workdir=DIR

Labels: 4000 or 10000 (40/100 per class). 5,000 training images are held out for
validation; every other training image is unlabeled. Random 4-px translation (zero
fill) and horizontal flip; 600 epochs of 600 steps (ICT's epoch: one pass over the
unlabeled set). Other algorithms: ``--config.algorithm=...``; their values are in
``config.<algorithm>`` (MixMatch's lambda_u 150). Table 5's ablations:
``--config.ema_decay=0``, ``--config.pseudo_label=one_hot``,
``--config.mixup=unlabeled|labeled|none``, ``--config.weights=ones|sign``.
Paper's test error, 4000 / 10000 labels: Meta-Semi 37.61 / 30.51 %, Meta-Semi + ICT
37.12 / 29.68 %, ICT 40.07 / 32.24 %, Learning to Reweight 46.62 / 37.31 %, Mean
Teacher 45.36 / 35.96 %, Pi-model 55.39 / 38.06 %, Supervised + MixUp 54.87 / 40.97 %,
Supervised 58.31 / 44.56 %; the ablations are listed in experiments/tables.py.
Measured on one GPU (NVIDIA H200, jax 0.11.2; experiments/results/gpu_check_h200):
the 360,000 steps take 0.96 h for Meta-Semi in float32 (9.6 ms/step) and 0.73 h in
bfloat16 (7.3 ms), ICT 0.72 / 0.53 h, counting the steps alone (not evaluations or
checkpoints). The paper's ICT run took 12.6 h on a Titan Xp (Table 4).
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "10000") -> ml_collections.ConfigDict:
    return cnn13_config("cifar100", num_labels, num_validation=5000, train_size=50_000,
                        mixmatch_weight=150.0)
