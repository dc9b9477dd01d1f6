"""The fields of a run's config and their defaults; each file in ``configs/`` starts here.

Every field can be overridden on the command line, e.g. ``--config.beta=0.5``.
``config_fields.FIELDS`` declares each field (default, allowed values, whether a resume
may change it); ``config_check.check_config`` checks a config against it.
"""
from __future__ import annotations

import ml_collections

from meta_semi_jax.config_fields import FIELDS


def base_config() -> ml_collections.ConfigDict:
    """Every field at its default (``config_fields.FIELDS``), and the baselines' sections."""
    c = ml_collections.ConfigDict({name: field.default for name, field in FIELDS.items()})
    set_baseline_recipes(c, steps_per_epoch=1, num_train_images=1, mixmatch_weight=75.0)
    return c


# VAT's perturbation norm on CIFAR-10 (vat_tf's VAT+EntMin command with augmentation), on
# images of about unit variance per pixel (algorithms/vat.py).
VAT_EPSILON = 8.0


def set_baseline_recipes(c: ml_collections.ConfigDict, *, steps_per_epoch: int,
                         num_train_images: int, mixmatch_weight: float,
                         ict_alpha: float = 1.0, vat_epsilon: float = VAT_EPSILON) -> None:
    """The other algorithms' hyper-parameters, ``c.<algorithm>.*``, from their own papers
    (each module in ``meta_semi_jax/algorithms`` says where a value comes from).

    Ramp-ups given in epochs use ``steps_per_epoch``; Mean Teacher's, 80 passes over the
    ``num_train_images`` (its 40,000 steps of 100 over CIFAR-10's 50,000), uses the
    config's batch sizes, so set them first. ICT's
    ramp-up (a quarter of training) and the weights scaled by the labeled fraction
    (Pi-model, Temporal Ensembling, Mean Teacher) follow overrides of ``num_train_steps`` and
    ``num_labels``.
    """
    steps = c.get_ref("num_train_steps")
    labeled_fraction_weight = c.get_ref("num_labels") * (100.0 / num_train_images)
    c.supervised_mixup = ml_collections.ConfigDict({"alpha": 1.0})
    c.pi_model = ml_collections.ConfigDict({
        "weight": labeled_fraction_weight, "rampup_steps": 80 * steps_per_epoch,
        "noisy_network": True})
    c.temporal_ensembling = ml_collections.ConfigDict({
        "weight": c.get_ref("num_labels") * (30.0 / num_train_images),
        "rampup_steps": 80 * steps_per_epoch, "momentum": 0.6, "noisy_network": True})
    mean_teacher = {
        "weight": labeled_fraction_weight,
        "rampup_steps": epochs_to_steps(80, num_train_images,
                                        c.labeled_batch_size + c.unlabeled_batch_size),
        "noisy_network": True, "ema_warmup": False}
    c.mean_teacher = ml_collections.ConfigDict(mean_teacher)
    # MT + fast-SWA: Mean Teacher's recipe plus fast-SWA's CIFAR-10 CNN-13 cycles and
    # averaging (cifar10_mt_cnn_short_n4k.py): cosine over 210 epochs, cycles of 30 after
    # epoch 180, the student averaged every 3 epochs from epoch 150, BatchNorm
    # statistics recomputed over 101 batches.
    c.mean_teacher_fast_swa = ml_collections.ConfigDict({
        **mean_teacher, "lr_decay_steps": 210 * steps_per_epoch,
        "cycle_start_steps": 180 * steps_per_epoch, "cycle_steps": 30 * steps_per_epoch,
        "average_every_steps": 3 * steps_per_epoch, "bn_batches": 101})
    # MT + SNTG: Mean Teacher's recipe plus SNTG's graph weight and margin (config.py).
    c.sntg = ml_collections.ConfigDict({**mean_teacher, "graph_weight": 0.4, "margin": 1.0})
    c.ict = ml_collections.ConfigDict({
        "alpha": ict_alpha, "weight": 100.0, "rampup_steps": steps // 4})
    c.meta_semi_ict = ml_collections.ConfigDict({
        "alpha": ict_alpha, "weight": 100.0, "rampup_steps": steps // 4})
    c.vat = ml_collections.ConfigDict({"epsilon": vat_epsilon, "alpha": 1.0})
    c.mixmatch = ml_collections.ConfigDict({
        "alpha": 0.75, "weight": mixmatch_weight, "rampup_steps": 16_384,
        "temperature": 0.5, "augmentations": 2})


def label_count(arg: str) -> int:
    """The label count given after the colon of ``--config=file.py:<num_labels>``."""
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"the label count after the colon must be an integer, got {arg!r}") \
            from None


def cnn13_config(dataset: str, num_labels: str, num_validation: int, train_size: int, *,
                 mixmatch_weight: float, ict_alpha: float = 1.0,
                 vat_epsilon: float = VAT_EPSILON) -> ml_collections.ConfigDict:
    """Appendix C's CNN-13 recipe: SGD Nesterov 0.9, L2 1e-4, lr 0.1 cosine to 0 over 600
    epochs, batch 25 labeled + 75 unlabeled, EMA 0.999. An epoch is one pass over the
    unlabeled set (ICT's definition), which holds every non-validation training image.
    ``mixmatch_weight`` (MixMatch's lambda_u), ``ict_alpha`` and ``vat_epsilon`` differ
    per dataset."""
    c = base_config()
    c.dataset, c.model = dataset, "cnn13"
    c.num_labels = label_count(num_labels)
    c.num_validation = num_validation
    c.unlabeled_includes_labeled = True
    c.labeled_batch_size, c.unlabeled_batch_size = 25, 75
    c.num_train_steps = epochs_to_steps(600, train_size - num_validation, 75)
    c.eval_every_steps = epochs_to_steps(5, train_size - num_validation, 75)
    c.log_every_steps = 200
    c.eval_batch_size = 500
    set_baseline_recipes(c, steps_per_epoch=epochs_to_steps(1, train_size - num_validation, 75),
                         num_train_images=train_size - num_validation,
                         mixmatch_weight=mixmatch_weight, ict_alpha=ict_alpha,
                         vat_epsilon=vat_epsilon)
    return c


def mixmatch_recipe_config(dataset: str, num_labels: str, num_validation: int,
                           train_size: int, *, mixmatch_weight: float
                           ) -> ml_collections.ConfigDict:
    """Appendix C's WRN-28-2 recipe, MixMatch's except the batch: Adam lr 0.002 constant,
    decoupled weight decay 0.02 * lr on kernels, EMA 0.999, batch 32 labeled + 96
    unlabeled, 1,048,576 steps ("1,024 epochs" of 1,024 steps: MixMatch's epoch is 64k
    images, not a pass over the data), evaluation every 16 epochs, reflect-padded
    translation and horizontal flip (MixMatch's augmentation)."""
    c = base_config()
    c.dataset, c.model = dataset, "wrn28_2"
    c.num_labels = label_count(num_labels)
    c.num_validation = num_validation
    c.labeled_batch_size, c.unlabeled_batch_size = 32, 96
    c.optimizer, c.learning_rate, c.lr_schedule, c.weight_decay = "adam", 0.002, "constant", 0.02
    c.pad_mode, c.flip = "reflect", True
    c.num_train_steps = 1 << 20
    c.eval_every_steps = 1 << 14
    c.log_every_steps = 200
    c.eval_batch_size = 512
    set_baseline_recipes(c, steps_per_epoch=1024, num_train_images=train_size - num_validation,
                         mixmatch_weight=mixmatch_weight)
    return c


def epochs_to_steps(epochs: int, pool_size: int, batch_size: int) -> int:
    """Steps for ``epochs`` passes over a pool read ``batch_size`` examples per step."""
    return -(-epochs * pool_size // batch_size)
