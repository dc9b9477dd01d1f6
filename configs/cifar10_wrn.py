"""Meta-Semi on CIFAR-10 with WRN-28-2 (paper Table 1, rows marked †; Appendix C).

    python -m meta_semi_jax.main --config=configs/cifar10_wrn.py:4000 --workdir=DIR

Labels: 1000, 2000 or 4000; 5,000 training images held out for validation; every other
training image is unlabeled. MixMatch's recipe except the batch 32 + 96
(``config_base.mixmatch_recipe_config``): 4-px reflect-padded translation and flip,
lambda_u = 75 for ``--config.algorithm=mixmatch``.
Paper's test error (†, WRN-28): Meta-Semi 7.34 / 6.58 / 6.10 %, MixMatch 7.75 / 7.03 /
6.24 %, Mean Teacher 17.32 / 12.17 / 10.36 % for 1000 / 2000 / 4000 labels.
Measured on one GPU (NVIDIA H200, jax 0.11.2; experiments/results/gpu_check_h200;
WRN-28-2 at 32x32, 10 classes): the 1,048,576 steps take 3.73 h for Meta-Semi
(12.8 ms/step) and 3.01 h for ICT (10.3 ms) in float32, counting the steps alone;
bfloat16 is no faster at this batch (13.1 ms). The paper's Table 4 gives 29.2 h for
MixMatch's full WRN run on CIFAR-100 on a Titan Xp.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import mixmatch_recipe_config


def get_config(num_labels: str = "4000") -> ml_collections.ConfigDict:
    c = mixmatch_recipe_config("cifar10", num_labels, num_validation=5000, train_size=50_000,
                               mixmatch_weight=75.0)
    c.translate = 4
    return c
