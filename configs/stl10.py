"""Meta-Semi on STL-10 with WRN-28-2 (paper Table 2; MixMatch's protocol, Appendix C),
with MixMatch's fourth stage for 96x96 images (``wrn28_2_scales4``).

    python -m meta_semi_jax.main --config=configs/stl10.py:1000 --workdir=DIR --config.fold=0

96x96 images. Labeled: one of the 10 predefined folds of 1,000 training images
(``config.fold``); validation: 500 of the other training images (50 per class);
unlabeled: the remaining 3,500 training images and the 100,000 unlabeled images.
MixMatch's recipe except the batch (``config_base.mixmatch_recipe_config``), with a
reflect-padded 12-px translation (MixMatch's for 96x96) and MixMatch's lambda_u = 50.
Paper's test error: Meta-Semi 8.03 ± 0.24 %, MixMatch 10.18 ± 1.46 % (Table 2).
Expected time on one GPU: not measured (this four-stage WRN at 96x96 is not in the GPU
check, experiments/results/gpu_check_h200); the paper's MixMatch-WRN runs on CIFAR took
29 h on a Titan Xp.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import mixmatch_recipe_config


def get_config(num_labels: str = "1000") -> ml_collections.ConfigDict:
    c = mixmatch_recipe_config("stl10", num_labels, num_validation=500, train_size=5_000,
                               mixmatch_weight=50.0)
    c.model = "wrn28_2_scales4"  # MixMatch's STL-10 network (runs/table2.sh: --scales=4)
    c.translate = 12
    return c
