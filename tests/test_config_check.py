"""Config checks: every bad value of the digits config is refused with one
``ConfigError`` line naming the field, the value and what is allowed; every allowed
value passes."""
from __future__ import annotations

import numpy as np
import pytest

from meta_semi_jax import config_check, data as data_lib
from meta_semi_jax.algorithms import ALGORITHMS
from meta_semi_jax.checkpoint import changed_fields, fixed_fields
from meta_semi_jax.config_check import ConfigError, check_config
from meta_semi_jax.config_fields import FIELDS, Choice
from meta_semi_jax.data.digits import load_digits_arrays
from meta_semi_jax.data.split import max_labels_per_class
from meta_semi_jax.meta import META_GRAD_METHODS
from meta_semi_jax.models import MODELS
from meta_semi_jax.optim import LR_SCHEDULES, OPTIMIZERS
from meta_semi_jax.parallel import PARALLEL_MODES
from tests.run_files import REPO, load_config

NUM_CLASSES = 10


def digits_config(num_labels: str = "50"):
    return load_config("digits", num_labels)


def check_all(config, num_devices: int = 4) -> None:
    """The checks that need no data: fields, then label counts against digits' classes."""
    check_config(config, num_devices)
    config_check.check_label_counts(config, NUM_CLASSES)


# (field, bad value, words of the message that say what is allowed)
BAD = [
    ("algorithm", "fixmatch", sorted(ALGORITHMS)),
    ("model", "resnet50", sorted(MODELS)),
    ("dataset", "imagenet", ["digits"]),
    ("meta_grad", "hessian", sorted(META_GRAD_METHODS)),
    ("parallel", "pjit", sorted(PARALLEL_MODES)),
    ("optimizer", "rmsprop", sorted(OPTIMIZERS)),
    ("lr_schedule", "step", sorted(LR_SCHEDULES)),
    ("teacher_bn_mode", "frozen", ["train", "eval"]),
    ("beta", 0.0, ["> 0"]),
    ("beta", -0.5, ["> 0"]),
    ("num_labels", 0, ["positive"]),
    ("num_labels", 55, ["multiple", "10 classes"]),
    ("num_validation", 205, ["multiple", "10 classes"]),
    ("num_validation", 0, ["positive"]),
    ("labeled_batch_size", 30, ["multiple", "devices (4)"]),
    ("unlabeled_batch_size", 98, ["multiple", "devices (4)"]),
    ("eval_batch_size", 502, ["multiple", "devices (4)"]),
    ("labeled_batch_size", 0, ["positive"]),
    ("ema_decay", 1.0, ["[0, 1)"]),
    ("ema_decay", -0.1, ["[0, 1)"]),
    ("translate", -1, [">= 0"]),
    ("learning_rate", 0.0, ["> 0"]),
    ("learning_rate", -0.1, ["> 0"]),
    ("momentum", 1.0, ["[0, 1)"]),
    ("weight_decay", -1e-4, [">= 0"]),
    ("num_train_steps", 0, ["positive"]),
    ("eval_every_steps", 0, ["positive"]),
    ("log_every_steps", -5, ["positive"]),
    ("seed", -1, [">= 0"]),
    ("split_seed", -3, [">= 0"]),
]


def _assert_one_line_naming(err: ConfigError, field: str, value, allowed_words) -> None:
    msg = str(err)
    assert "\n" not in msg.strip(), msg
    prefix = f"config.{field}="
    assert prefix in msg, msg
    assert str(value) in msg.split(prefix, 1)[1], msg
    for word in allowed_words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("field,value,allowed_words", BAD,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_value_raises_one_line_config_error(field, value, allowed_words):
    """Changing one field of the default digits config to a bad value raises a
    ConfigError (a ValueError) that names that field, its value and what is allowed."""
    config = digits_config()
    config[field] = value
    with pytest.raises(ConfigError) as info:
        check_all(config, num_devices=4)
    assert isinstance(info.value, ValueError)
    _assert_one_line_naming(info.value, field, value, allowed_words)


def test_pad_mode_and_fold_are_checked_when_present():
    """The newer fields are checked like the others: pad_mode is a choice, fold 0-9."""
    config = digits_config()
    config.pad_mode = "wrap"
    with pytest.raises(ConfigError) as info:
        check_all(config)
    _assert_one_line_naming(info.value, "pad_mode", "wrap", ["zero", "reflect"])
    config = digits_config()
    config.fold = 10
    with pytest.raises(ConfigError) as info:
        check_all(config)
    _assert_one_line_naming(info.value, "fold", 10, ["0-9"])


@pytest.mark.parametrize("changes,field,words", [
    ({"meta_grad": "finite_difference", "compute_dtype": "bfloat16"}, "meta_grad",
     ["float32", "jvp or last_layer"]),
    ({"log_selection_agreement": True}, "log_selection_agreement", ["last_layer"]),
    ({"log_selection_agreement": True, "algorithm": "ict"}, "log_selection_agreement",
     ["meta_semi", "l2rw"]),
])
def test_cheaper_score_limits_are_one_line(changes, field, words):
    """Finite differences need float32; the agreement diagnostic needs a cheaper score
    of Meta-Semi's reweighting to compare with the exact one."""
    config = digits_config()
    config.update(changes)
    with pytest.raises(ConfigError) as info:
        check_all(config)
    _assert_one_line_naming(info.value, field, changes[field], words)
    config.update({"log_selection_agreement": False, "compute_dtype": "float32",
                   "algorithm": "meta_semi"})
    check_all(config)


def test_default_digits_config_passes_on_1_and_4_devices():
    """The shipped digits config (and other label counts) passes all data-free checks."""
    for labels in ("50", "100", "250"):
        config = digits_config(labels)
        check_all(config, num_devices=1)
        check_all(config, num_devices=4)


def _choice_cases():
    cases = [(name, value) for name, field in FIELDS.items()
             if isinstance(field.allowed, Choice) for value in field.allowed.values]
    cases += [("dataset", name) for name in data_lib.BUILTIN_DATASETS]
    cases += [("dataset", form) for form in ("tfds:mnist", "npz:mine.npz", "folder:images")]
    return cases


@pytest.mark.parametrize("field,value", _choice_cases(), ids=lambda x: str(x))
def test_every_allowed_choice_passes(field, value):
    """Each allowed value of each choice field passes check_config on one device."""
    config = digits_config()
    config[field] = value
    check_config(config, 1)


def documented_values(doc: str) -> set[str]:
    """``"a | b (note) | c: what it does"`` -> {a, b, c}."""
    listing = doc.split(":")[0]
    return {part.split()[0] for part in listing.split("|")} if "|" in listing else set()


@pytest.mark.parametrize("name", [name for name, field in FIELDS.items()
                                  if isinstance(field.allowed, Choice) and name != "algorithm"])
def test_each_choice_field_documents_exactly_its_values(name):
    """A field's doc (shown in config_fields.py) lists the values the check allows."""
    field = FIELDS[name]
    assert documented_values(field.doc) == set(field.allowed.values), field.doc


def _digits_limit() -> int:
    train_labels = load_digits_arrays()[1]
    return max_labels_per_class(train_labels, NUM_CLASSES, 200)


def test_pool_size_rejects_more_labels_than_digits_has():
    """1,300 labels on digits exceed what is left after 200 validation images: the error
    names num_labels=1300 and the limit, per class and in total; the limit itself passes."""
    limit = _digits_limit()
    assert 0 < limit < 130
    config = digits_config("1300")
    with pytest.raises(ConfigError) as info:
        config_check.check_pool_size(config, limit, NUM_CLASSES)
    _assert_one_line_naming(info.value, "num_labels", 1300,
                            [f"at most {limit} labels per class", str(limit * NUM_CLASSES)])
    config_check.check_pool_size(digits_config(str(limit * NUM_CLASSES)), limit, NUM_CLASSES)


def test_unlabeled_batch_must_not_exceed_the_pool_labeled_batch_may():
    """An unlabeled batch larger than the unlabeled set is refused naming the field, its
    value and the pool size; a labeled batch larger than the labeled set is allowed
    (it spans several epochs of the labeled set: ``test_sampler``)."""
    config = digits_config("50")
    config.unlabeled_batch_size = 96
    with pytest.raises(ConfigError) as info:
        config_check.check_batch_sizes(config, 90)
    _assert_one_line_naming(info.value, "unlabeled_batch_size", 96, ["90 unlabeled"])
    config_check.check_batch_sizes(digits_config("50"), 96)  # equal sizes are fine
    config_check.check_batch_sizes(digits_config("20"), 1077)  # 20 labels, batch 32


def test_stl10_fold_size_must_match_num_labels():
    """With a predefined labeled fold, num_labels must equal the fold size."""
    config = digits_config("250")
    with pytest.raises(ConfigError) as info:
        config_check.check_label_counts(config, NUM_CLASSES, fold_size=1000)
    _assert_one_line_naming(info.value, "num_labels", 250, ["1000"])
    config_check.check_label_counts(digits_config("1000"), NUM_CLASSES, fold_size=1000)


def test_first_bad_field_is_reported_when_several_are_bad():
    """Only one error is raised, for one of the bad fields, never for a good one."""
    config = digits_config()
    config.beta = -1.0
    config.learning_rate = 0.0
    with pytest.raises(ConfigError) as info:
        check_all(config)
    msg = str(info.value)
    assert ("config.beta=" in msg) != ("config.learning_rate=" in msg)
    assert np.all([f"config.{f}=" not in msg for f in ("model", "algorithm", "ema_decay")])


def test_validation_larger_than_a_class_is_blamed_on_num_validation():
    """num_validation=1300 asks 130 validation images of every digit class, but the smallest
    class has fewer: the error should name config.num_validation, not num_labels."""
    train_labels = load_digits_arrays()[1]
    config = digits_config("50")
    config.num_validation = 1300
    limit = max_labels_per_class(train_labels, NUM_CLASSES, 1300)
    with pytest.raises(ConfigError) as info:
        config_check.check_pool_size(config, limit, NUM_CLASSES)
    _assert_one_line_naming(info.value, "num_validation", 1300, [])


CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_field_of_every_config_is_declared(name):
    """A config file may only set declared fields (``config_fields.FIELDS``: default,
    allowed values, fixed on resume or not) and the algorithms' own sections."""
    config = load_config(name, "250" if name != "stl10" else "1000")
    undeclared = set(config.keys()) - set(FIELDS) - set(ALGORITHMS)
    assert not undeclared, f"configs/{name}.py sets undeclared fields {sorted(undeclared)}"
    assert set(FIELDS) <= set(config.keys())


def another_value(value):
    if isinstance(value, bool):
        return not value
    return value + ("_other" if isinstance(value, str) else 1)


def test_a_resume_may_not_change_a_fixed_field_but_may_change_a_free_one():
    saved = fixed_fields(digits_config())
    for name, field in FIELDS.items():
        config = digits_config()
        config[name] = another_value(config[name])
        assert bool(changed_fields(saved, config)) == field.fixed, name
    # Several devices synchronise BatchNorm or not: different gradients.
    assert FIELDS["sync_batch_norm"].fixed and not FIELDS["parallel"].fixed
