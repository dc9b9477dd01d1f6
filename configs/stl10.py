"""Meta-Semi on STL-10 with WRN (paper Table 2; MixMatch's protocol, Appendix C).

    python -m meta_semi_jax.main --config=configs/stl10.py:1000 --workdir=DIR --config.fold=0

96x96 images. Labeled: one of the 10 predefined folds of 1,000 training images
(``config.fold``); validation: 500 of the other training images (50 per class);
unlabeled: the remaining 3,500 training images and the 100,000 unlabeled images.
MixMatch's recipe except the batch: Adam lr 0.002 constant, decoupled weight decay
0.02 * lr on kernels, EMA 0.999, batch 32 + 96, reflect-padded 12-px translation and
horizontal flip, 1,048,576 steps. Paper's test error: 8.03 %.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import base_config, label_count


def get_config(num_labels: str = "1000") -> ml_collections.ConfigDict:
    c = base_config()
    c.dataset, c.model = "stl10", "wrn28_2"
    c.num_labels = label_count(num_labels)
    c.num_validation = 500
    c.labeled_batch_size, c.unlabeled_batch_size = 32, 96
    c.optimizer, c.learning_rate, c.lr_schedule, c.weight_decay = "adam", 0.002, "constant", 0.02
    c.translate, c.pad_mode, c.flip = 12, "reflect", True
    c.num_train_steps = 1 << 20
    c.eval_every_steps = 1 << 14
    c.log_every_steps = 200
    c.eval_batch_size = 512
    return c
