"""Mean Teacher + fast-SWA (Athiwaratkun, Finzi, Izmailov & Wilson, ICLR 2019, "There are
many consistent explanations of unlabeled data: why you should average"): Mean
Teacher trained with cyclical learning rates, evaluated as the average of the
student's weights at several points of every cycle, with BatchNorm statistics
recomputed for the average.

Loss: Mean Teacher's (``mean_teacher.py``, unchanged, with its recipe ``weight``,
``rampup_steps``, ``teacher_bn_mode``, ``noisy_network``, ``ema_warmup``):
``mean CE(f(x), y) + w(t) * mean_u ||softmax f(aug1(u)) - softmax f_ema(aug2(u))||^2 / C``.

fast-SWA's parts, from its code for CIFAR-10 CNN-13 (github.com/benathi/fastswa-semi-sup
at 6f6da5f, ``experiments/cifar10_mt_cnn_short_n4k.py``, ``main.py``), in epochs
(``config_base.set_baseline_recipes`` converts them to steps):

- learning rate (``optim.cyclic_cosine_schedule``, their ``adjust_learning_rate``): the
  peak ``config.learning_rate`` (their ``base_lr`` 0.1 per GPU) on a cosine to 0 over
  ``lr_decay_steps`` (``lr_rampdown_epochs`` 210), followed for the first
  ``cycle_start_steps`` (l0, ``epochs`` 180); then cycles of ``cycle_steps`` (c,
  ``cycle_interval`` 30) that each repeat the cosine's epochs 150-180.
- weight average (``weight_average.py``, their ``WeightSWA``): the student's
  parameters (not the EMA teacher's) after every ``average_every_steps`` (3 epochs,
  ``fastswa_frequencies='3'``) from ``cycle_start_steps - cycle_steps`` (epoch
  l0 - c = 150) on, a running mean.
- the evaluated model: the average, with BatchNorm statistics recomputed by train-mode
  passes over ``bn_batches`` training batches (``bn_recompute.py``; their
  ``update_batchnorm`` stops after 101 batches of the train loader); before the first
  averaging point, the EMA teacher, as Mean Teacher.

Their run trains 1200 epochs (34 cycles after l0); here the run's length is the
config's (600 epochs in the CNN-13 configs, 14 cycles). Their own Mean Teacher
settings (EMA 0.97, consistency 100 ramped over 5 epochs, two heads with a
logit-distance cost 0.01, batch 50 + 50) are not taken: the row is this package's Mean
Teacher (its CNN-13 recipe) with fast-SWA's schedule and averaging (README, "Where
this differs").
"""
from __future__ import annotations

from meta_semi_jax.algorithms import mean_teacher
from meta_semi_jax.algorithms.common import Algorithm
from meta_semi_jax.optim import LRCycles
from meta_semi_jax.weight_average import FastSWA, initial_average


def make(num_classes: int, *, weight: float, rampup_steps: int, teacher_bn_mode: str,
         noisy_network: bool, ema_warmup: bool, lr_decay_steps: int, cycle_start_steps: int,
         cycle_steps: int, average_every_steps: int, bn_batches: int) -> Algorithm:
    """Mean Teacher (``weight``, ``rampup_steps``, ``teacher_bn_mode``, ``noisy_network``,
    ``ema_warmup`` as ``mean_teacher.make``'s) with fast-SWA's learning-rate cycles
    (``lr_decay_steps``, ``cycle_start_steps``, ``cycle_steps``: ``optim.LRCycles``) and
    its average of the student's weights every ``average_every_steps`` from
    ``cycle_start_steps - cycle_steps`` on, evaluated with BatchNorm statistics
    recomputed over ``bn_batches`` training batches."""
    teacher = mean_teacher.make(num_classes, weight=weight, rampup_steps=rampup_steps,
                                teacher_bn_mode=teacher_bn_mode,
                                noisy_network=noisy_network, ema_warmup=ema_warmup)
    return teacher._replace(
        init_state=lambda pool_size, params: initial_average(params),
        lr_cycles=LRCycles(lr_decay_steps, cycle_start_steps, cycle_steps),
        weight_average=FastSWA(cycle_start_steps - cycle_steps, average_every_steps,
                               bn_batches))
