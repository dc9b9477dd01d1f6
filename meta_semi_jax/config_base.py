"""The fields of a run's config and their defaults; each file in ``configs/`` starts here.

Every field can be overridden on the command line, e.g. ``--config.beta=0.5``.
``config_check.check_config`` says which values each field allows.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to train.
    c.algorithm = "meta_semi"          # meta_semi | supervised
    c.model = "small_cnn"              # small_cnn | cnn13 | wrn28_2
    c.dataset = "digits"
    c.num_labels = 50                  # labels in total, spread evenly over the classes
    c.num_validation = 200             # held out from the training set, evenly per class
    c.unlabeled_includes_labeled = False
    c.seed = 0                         # model initialisation, batches, augmentation, MixUp
    c.split_seed = 0                   # which labeled/validation split (0-4: the paper's five)
    # Meta-Semi.
    c.beta = 1.0                       # MixUp's Beta(beta, beta), Eqs. (12)-(13)
    c.meta_grad = "jvp"                # jvp | unrolled | per_example (meta.py)
    c.teacher_bn_mode = "train"        # train | eval: BatchNorm of the EMA teacher (ICT: train)
    c.ema_decay = 0.999
    # Steps and batches (global over all devices).
    c.num_train_steps = 2000
    c.labeled_batch_size = 25
    c.unlabeled_batch_size = 75
    c.eval_batch_size = 500
    c.eval_every_steps = 200
    c.log_every_steps = 50
    # Optimiser (Appendix C, CNN-13).
    c.optimizer = "sgd"                # sgd (Nesterov, coupled L2) | adam (decoupled decay)
    c.learning_rate = 0.1
    c.lr_schedule = "cosine"           # cosine | constant
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    # Augmentation on the device.
    c.translate = 4                    # max random shift in pixels
    c.flip = True                      # random horizontal flip
    # Devices.
    c.parallel = "shard_map"           # shard_map | pmap
    c.sync_batch_norm = True           # BatchNorm statistics over all devices
    return c


def label_count(arg: str) -> int:
    """The label count given after the colon of ``--config=file.py:<num_labels>``."""
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"the label count after the colon must be an integer, got {arg!r}") \
            from None
