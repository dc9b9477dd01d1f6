"""CIFAR-10 with CNN-13 (paper Table 1; Appendix C). Meta-Semi by default:

    python -m meta_semi_jax.main --config=configs/cifar10.py:1000 --workdir=DIR
    python -m meta_semi_jax.main --config=configs/cifar10.py:1000 --workdir=DIR \
        --config.algorithm=ict     # any of meta_semi_jax.algorithms.ALGORITHMS

Labels: 1000, 2000 or 4000 (100/200/400 per class). 5,000 training images are held out
for validation; every other training image is unlabeled. Random 4-px translation
(zero fill) and horizontal flip; 600 epochs of 600 steps (an epoch is one pass over the
45,000 unlabeled images at 75 per step, ICT's definition). The baselines' values are
in ``config.<algorithm>`` (``config_base.set_baseline_recipes``; MixMatch's lambda_u 75).
Paper's test error, 1000 / 2000 / 4000 labels: Meta-Semi 10.27 / 8.42 / 7.05 %,
Meta-Semi + ICT 9.29 / 7.05 / 6.42 %, ICT 12.44 / 8.69 / 7.18 %, Learning to Reweight
11.74 / - / 9.44 %, Mean Teacher 18.27 / 13.45 / 10.73 %, Pi-model 28.74 / 17.57 /
12.36 %, Supervised + MixUp 31.83 / 24.22 / 17.37 %, Supervised 39.95 / 27.67 / 20.42 %.
Measured on one GPU (NVIDIA H200, jax 0.11.2; experiments/results/gpu_check_h200):
the 360,000 steps take 0.96 h for Meta-Semi in float32 (9.6 ms/step) and 0.73 h in
bfloat16 (7.3 ms), ICT 0.72 / 0.53 h, counting the steps alone (not evaluations or
checkpoints). The paper's ICT run took 12.6 h on a Titan Xp (Table 4).
The dataset is read through tfds; prepare it once with
``python -m meta_semi_jax.data prepare cifar10 --data_dir=...``.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import cnn13_config


def get_config(num_labels: str = "4000") -> ml_collections.ConfigDict:
    return cnn13_config("cifar10", num_labels, num_validation=5000, train_size=50_000,
                        mixmatch_weight=75.0)
