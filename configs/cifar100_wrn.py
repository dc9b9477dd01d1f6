"""Meta-Semi on CIFAR-100 with WRN-28-2 (paper Tables 1 and 4, rows marked †).

    python -m meta_semi_jax.main --config=configs/cifar100_wrn.py:10000 --workdir=DIR

Labels: 10000 (100 per class; the paper's only † CIFAR-100 cell); 5,000 training
images held out for validation. MixMatch's recipe except the batch 32 + 96
(``config_base.mixmatch_recipe_config``), lambda_u = 150 (MixMatch's CIFAR-100 value)
for ``--config.algorithm=mixmatch``. The paper names the network WRN-28; MixMatch's
own CIFAR-100 result used a wider WRN-28-8, here it is WRN-28-2 as for CIFAR-10.
Paper's test error (†): Meta-Semi 29.69 ± 0.18 %, MixMatch 30.84 ± 0.29 %.
Measured on one GPU (NVIDIA H200, jax 0.11.2; experiments/results/gpu_check_h200;
WRN-28-2 at 32x32, 10 classes): the 1,048,576 steps take 3.73 h for Meta-Semi
(12.8 ms/step) and 3.01 h for ICT (10.3 ms) in float32, counting the steps alone;
bfloat16 is no faster at this batch (13.1 ms). The paper's Table 4 gives 29.2 h for
MixMatch's full WRN run on CIFAR-100 on a Titan Xp.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import mixmatch_recipe_config


def get_config(num_labels: str = "10000") -> ml_collections.ConfigDict:
    c = mixmatch_recipe_config("cifar100", num_labels, num_validation=5000, train_size=50_000,
                               mixmatch_weight=150.0)
    c.translate = 4
    return c
