"""Fashion-MNIST with a CPU-sized CNN-13, on a 2-core CPU. Meta-Semi by default:

    apt-get install -y dataset-fashion-mnist    # once: the IDX files, no network needed
    python -m meta_semi_jax.main --config=configs/fashion_mnist.py:1000 --workdir=DIR

``:1000`` is the number of labels (100 per class). CIFAR's protocol: 5,000 of the
60,000 training images held out for validation (500 per class), every other training
image unlabeled (55,000, the labeled ones included, as in the CNN-13 configs), the
official 10,000 test images. Random 2-px translation (zero fill), no flip. The
paper's CNN-13 optimiser and batch (Appendix C): SGD Nesterov 0.9, lr 0.1 cosine to 0,
L2 1e-4, 25 labeled + 75 unlabeled images a step (1:3), EMA 0.999. The model is
``cnn13_small`` (``models/cnn13_small.py``): CNN-13's layers at 1/16 of its widths.

Length: 10 epochs of the unlabeled set (7,334 steps of 75), an evaluation every half
epoch. The paper's 600-epoch schedule does not fit a CPU, so the baselines' ramp-ups
(``config.<algorithm>``) keep their share of it: a recipe's "epoch" here is 1/600 of
the run (Pi-model, Temporal Ensembling, Mean Teacher, MT + fast-SWA and SNTG ramp up
over 80 of them, 13% of the run, and fast-SWA's cycles start at 180 of them; ICT ramps
up over a quarter of the run; MixMatch over 1/64 of it, as in its paper).
VAT's epsilon is CIFAR-10's ball per pixel, 8.0 * sqrt(784 / 3072).

Measured on this project's 2-core CPU machine (2026-11-26, one process, the machine
shared with another engineer's jobs: load average about 4), jax 0.10 on the CPU:

    python -m meta_semi_jax.benchmark --model=cnn13_small \
        --algorithms=meta_semi:jvp,ict,supervised --steps=20 --warmup=3

Meta-Semi 325 ms a step (3.0 GFLOP), ICT 204 ms, supervised 28 ms: a Meta-Semi step
costs 11.5 supervised ones. Inside the training program a Meta-Semi step (with its
diagnostics) took 370 ms and an evaluation of the 5,000 validation images about 9 s,
so the default 7,334 steps would take about 50 minutes (an estimate from these
timings; no full run has been made).

A short run only, to show that the program learns on Fashion-MNIST (400 steps of the
7,334, the cosine schedule compressed to them; seed 0, split seed 0, 1000 labels):

    python -m meta_semi_jax.main --config=configs/fashion_mnist.py:1000 --workdir=DIR \
        --config.num_train_steps=400 --config.eval_every_steps=100 --config.log_every_steps=50

Meta-Semi: validation accuracy 55.4, 59.6, 62.3, 63.7 % at steps 100-400, test error
35.7 % (262 s, 60 s of them compiling); the same command with
``--config.algorithm=supervised``: 56.5, 66.0, 69.0, 71.1 %, test error 27.9 % (75 s).
After 400 steps (0.5 epochs of the unlabeled set, the EMA teacher still warming up)
Meta-Semi is behind supervised training; these numbers say that it learns, not how it
compares after a full run.
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

TRAIN_SIZE, NUM_VALIDATION = 60_000, 5_000
EPOCHS = 10
PAPER_EPOCHS = 600  # Appendix C's CNN-13 run, which the recipes' ramp-ups are given in


def get_config(num_labels: str = "1000") -> ml_collections.ConfigDict:
    c = base_config()
    c.dataset = "fashion_mnist"
    c.model = "cnn13_small"
    c.num_labels = label_count(num_labels)
    c.num_validation = NUM_VALIDATION
    c.unlabeled_includes_labeled = True
    c.translate, c.flip = 2, False
    c.labeled_batch_size, c.unlabeled_batch_size = 25, 75
    unlabeled = TRAIN_SIZE - NUM_VALIDATION
    c.num_train_steps = epochs_to_steps(EPOCHS, unlabeled, 75)
    c.eval_every_steps = epochs_to_steps(1, unlabeled, 2 * 75)
    c.log_every_steps = 100
    recipe_epoch = c.num_train_steps // PAPER_EPOCHS
    set_baseline_recipes(c, steps_per_epoch=recipe_epoch, num_train_images=unlabeled,
                         mixmatch_weight=75.0,
                         vat_epsilon=VAT_EPSILON * (784 / 3072) ** 0.5)
    # Mean Teacher's ramp-up is 80 epochs of the training set in its recipe, too.
    for section in (c.mean_teacher, c.mean_teacher_fast_swa, c.sntg):
        section.rampup_steps = 80 * recipe_epoch
    c.mixmatch.rampup_steps = c.get_ref("num_train_steps") // 64
    return c
