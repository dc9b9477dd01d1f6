"""The embedded default: scikit-learn's 8x8 handwritten digits, on a 2-core CPU.

    python -m meta_semi_jax.main --config=configs/digits.py:50 --workdir=/tmp/digits

``:50`` is the number of labels (5 per class). 1,297 training images (200 held out for
validation, the rest unlabeled) and a fixed test set of 500. Small CNN, the paper's
optimiser (SGD Nesterov 0.9, lr 0.1 cosine, L2 1e-4), batch 32 labeled + 96 unlabeled
(the paper's 1:3 ratio, divisible by any power-of-two device count up to 32).
Translation by 1 px, no flip (digits are not mirror-symmetric). beta 0.5, in the
paper's range [0.2, 1]; Figure 3's digits runs (2,000 steps, seeds 0-2,
experiments/results/digits) cannot tell it from 1.0: validation accuracy 91.67 against
92.33 %, test error 7.67 against 8.00 %, both within a seed's spread. EMA decay 0.99
instead of 0.999 because 4,000 steps are too few for a 1,000-step averaging horizon.
The other algorithms (``--config.algorithm=...``) take CIFAR-10's recipes
(``config.<algorithm>``), their ramp-ups measured in epochs of the 1,097 unlabeled
images (12 steps each) and MixMatch's over the same 1/64 of the run as in its paper,
and fast-SWA's cycles over the same fractions of the run as in its code's 1,200 epochs.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_base import (
    VAT_EPSILON,
    base_config,
    epochs_to_steps,
    label_count,
    set_baseline_recipes,
)


def get_config(num_labels: str = "50") -> ml_collections.ConfigDict:
    c = base_config()
    c.dataset = "digits"
    c.model = "small_cnn"
    c.num_labels = label_count(num_labels)
    c.num_validation = 200
    c.translate = 1
    c.flip = False
    c.labeled_batch_size = 32          # divisible by 1, 2, 4, 8, 16 and 32 devices
    c.unlabeled_batch_size = 96
    c.beta = 0.5                       # in the paper's range [0.2, 1] (docstring)
    c.ema_decay = 0.99                 # a 4,000-step run needs a teacher that keeps up
    c.num_train_steps = 4000
    c.eval_every_steps = 200
    unlabeled = 1297 - c.num_validation
    set_baseline_recipes(c, steps_per_epoch=epochs_to_steps(1, unlabeled, 96),
                         num_train_images=unlabeled, mixmatch_weight=75.0,
                         # CIFAR-10's VAT ball per pixel: 8.0 * sqrt(64 / 3072) pixels.
                         vat_epsilon=VAT_EPSILON * (64 / 3072) ** 0.5)
    # MixMatch ramps lambda_u over 1/64 of its run (16,384 of 1,048,576 steps).
    c.mixmatch.rampup_steps = c.get_ref("num_train_steps") // 64
    # fast-SWA's epochs (l0 180, cosine 210, cycles 30, averaging every 3) as the same
    # fractions of the run as of its CIFAR-10 run's 1,200 epochs: in digits epochs, l0
    # would come after the digits edition's 2,000 steps.
    steps = c.get_ref("num_train_steps")
    for field, epochs in (("lr_decay_steps", 210), ("cycle_start_steps", 180),
                          ("cycle_steps", 30), ("average_every_steps", 3)):
        c.mean_teacher_fast_swa[field] = steps * epochs // 1200
    return c
