"""The fields of a run's config and their defaults; each file in ``configs/`` starts here.

Every field can be overridden on the command line, e.g. ``--config.beta=0.5``.
``config_check.check_config`` says which values each field allows.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to train.
    c.algorithm = "meta_semi"          # see meta_semi_jax.algorithms.ALGORITHMS
    c.model = "small_cnn"              # small_cnn | cnn13 | wrn28_2
    c.dataset = "digits"               # digits | cifar10 | cifar100 | svhn | stl10 | tfds:<name>
    c.data_dir = ""                    # tfds data directory ("" = tfds' default)
    c.tfds_train_split = "train"       # for tfds:<name> datasets
    c.tfds_test_split = "test"
    c.fold = 0                         # STL-10: which predefined fold is labeled (0-9)
    c.num_labels = 50                  # labels in total, spread evenly over the classes
    c.num_validation = 200             # held out from the training set, evenly per class
    c.unlabeled_includes_labeled = False
    c.seed = 0                         # model initialisation, batches, augmentation, MixUp
    c.split_seed = 0                   # which labeled/validation split (0-4: the paper's five)
    # Meta-Semi.
    c.beta = 1.0                       # MixUp's Beta(beta, beta), Eqs. (12)-(13)
    c.meta_grad = "jvp"                # jvp | unrolled | per_example (meta.py)
    c.teacher_bn_mode = "train"        # train | eval: BatchNorm of the EMA teacher (ICT: train)
    c.ema_decay = 0.999                # 0: no parameter EMA (Table 5)
    # Table 5's ablations of Meta-Semi (algorithms/meta_semi.py).
    c.pseudo_label = "soft"            # soft | one_hot
    c.mixup = "both"                   # both | unlabeled | labeled | none: which data MixUp mixes
    c.weights = "meta"                 # meta (Eq. 9) | ones | sign (+-1)
    # Steps and batches (global over all devices).
    c.num_train_steps = 2000
    c.labeled_batch_size = 25
    c.unlabeled_batch_size = 75
    c.eval_batch_size = 500
    c.eval_every_steps = 200
    c.log_every_steps = 50
    c.log_assumption_ratio = False     # Monte-Carlo ratio of Assumption 1 at each evaluation
    c.assumption_ratio_samples = 500   # the paper's sample size (Fig. 2)
    # Checkpoints (orbax): every so many steps and at the end; a rerun resumes.
    c.checkpoint_every_steps = 1000
    c.max_checkpoints = 2
    c.allow_config_change = False      # resume although experiment-defining fields changed
    # Optimiser (Appendix C, CNN-13).
    c.optimizer = "sgd"                # sgd (Nesterov, coupled L2) | adam (decoupled decay)
    c.learning_rate = 0.1
    c.lr_schedule = "cosine"           # cosine | constant
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    # Augmentation on the device.
    c.translate = 4                    # max random shift in pixels
    c.pad_mode = "zero"                # zero | reflect: how a shifted image is filled
    c.flip = True                      # random horizontal flip
    # Devices and precision.
    c.compute_dtype = "float32"        # float32 | bfloat16: convs and matmuls (params stay float32)
    c.parallel = "shard_map"           # shard_map | pmap
    c.sync_batch_norm = True           # BatchNorm statistics over all devices
    c.unlabeled_placement = "replicated"  # replicated | sharded over devices | host (data/)
    set_baseline_recipes(c, steps_per_epoch=1, num_train_images=1, mixmatch_weight=75.0)
    return c


def set_baseline_recipes(c: ml_collections.ConfigDict, *, steps_per_epoch: int,
                         num_train_images: int, mixmatch_weight: float,
                         ict_alpha: float = 1.0) -> None:
    """The other algorithms' hyper-parameters, ``c.<algorithm>.*``, from their own papers
    (each module in ``meta_semi_jax/algorithms`` says where a value comes from).

    Ramp-ups given in epochs use ``steps_per_epoch``; ICT's (a quarter of training)
    and the Pi-model's weight (scaled by the labeled fraction) follow overrides of
    ``num_train_steps`` and ``num_labels``.
    """
    steps = c.get_ref("num_train_steps")
    c.supervised_mixup = ml_collections.ConfigDict({"alpha": 1.0})
    c.pi_model = ml_collections.ConfigDict({
        "weight": c.get_ref("num_labels") * (100.0 / num_train_images),
        "rampup_steps": 80 * steps_per_epoch})
    c.mean_teacher = ml_collections.ConfigDict({
        "weight": 100.0, "rampup_steps": 5 * steps_per_epoch})
    c.ict = ml_collections.ConfigDict({
        "alpha": ict_alpha, "weight": 100.0, "rampup_steps": steps // 4})
    c.meta_semi_ict = ml_collections.ConfigDict({
        "alpha": ict_alpha, "weight": 100.0, "rampup_steps": steps // 4})
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
                 mixmatch_weight: float, ict_alpha: float = 1.0) -> ml_collections.ConfigDict:
    """Appendix C's CNN-13 recipe: SGD Nesterov 0.9, L2 1e-4, lr 0.1 cosine to 0 over 600
    epochs, batch 25 labeled + 75 unlabeled, EMA 0.999. An epoch is one pass over the
    unlabeled set (ICT's definition), which holds every non-validation training image.
    ``mixmatch_weight`` (MixMatch's lambda_u) and ``ict_alpha`` differ per dataset."""
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
                         mixmatch_weight=mixmatch_weight, ict_alpha=ict_alpha)
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
