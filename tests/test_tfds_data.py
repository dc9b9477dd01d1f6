"""The paper's datasets through the real tfds path, on ``tfds.testing.mock_data``.

Mocked datasets have random labels and a chosen number of examples per split, so the
protocol is tested with counts scaled down from Appendix C's (``num_validation``,
``num_labels``); everything else (configs, readers, split, extra unlabeled data) is
the code a real run uses.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from meta_semi_jax import build, data as data_lib, train
from meta_semi_jax.config_check import ConfigError
from meta_semi_jax.data import DataError, stl10_folds
from tests.run_files import load_config

MOCK_EXAMPLES = 2000


def scaled_config(name: str, num_labels: int, num_validation: int, tmp_path, split_seed=0):
    config = load_config(name, str(num_labels))
    config.num_validation, config.split_seed = num_validation, split_seed
    config.data_dir = str(tmp_path)
    return config


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


PROTOCOLS = [("cifar10", 10, 100, 100), ("cifar100", 100, 200, 100), ("svhn", 10, 50, 100)]


@pytest.mark.parametrize("name,num_classes,num_labels,num_validation", PROTOCOLS)
def test_sampled_label_protocol(mock_tfds, tmp_path, name, num_classes, num_labels,
                                num_validation):
    config = scaled_config(name, num_labels, num_validation, tmp_path)
    assert data_lib.dataset_facts(config) == (num_classes, (32, 32, 3))
    raw = data_lib.load_raw(config)
    assert raw.train_images.dtype == np.uint8 and raw.train_images.shape[1:] == (32, 32, 3)
    assert len(raw.train_labels) == len(raw.test_labels) == MOCK_EXAMPLES
    split = data_lib.split_indices(config, raw)
    labeled_classes = np.bincount(raw.train_labels[split.labeled], minlength=num_classes)
    np.testing.assert_array_equal(labeled_classes, num_labels // num_classes)
    val_classes = np.bincount(raw.train_labels[split.validation], minlength=num_classes)
    np.testing.assert_array_equal(val_classes, num_validation // num_classes)
    assert not set(split.labeled) & set(split.validation)
    # Every non-validation training image is unlabeled (Appendix C: "all other samples").
    np.testing.assert_array_equal(
        split.unlabeled, np.setdiff1d(np.arange(MOCK_EXAMPLES), split.validation))
    # Deterministic under a seed, different across the paper's five seeds.
    again = data_lib.split_indices(config, data_lib.load_raw(config))
    assert again.digest() == split.digest()
    digests = {data_lib.split_indices(
        scaled_config(name, num_labels, num_validation, tmp_path, seed), raw).digest()
        for seed in range(5)}
    assert len(digests) == 5
    ssl = data_lib.split_dataset(raw, split)
    assert len(ssl.test_labels) == MOCK_EXAMPLES  # the official test split, not the pool
    assert ssl.mean.shape == ssl.std.shape == (3,)


def test_stl10_uses_a_predefined_fold_and_the_unlabeled_split(mock_tfds, tmp_path):
    config = scaled_config("stl10", 1000, 50, tmp_path)
    config.fold = 3
    path = pathlib.Path(stl10_folds.fold_file_path(str(tmp_path)))
    path.parent.mkdir(parents=True)
    folds = np.arange(10 * 40).reshape(10, 40) % 500
    path.write_text("\n".join(" ".join(map(str, row)) for row in folds) + "\n")
    raw = data_lib.load_raw(config)
    assert raw.train_images.shape[1:] == (96, 96, 3)
    assert len(raw.extra_unlabeled_images) == MOCK_EXAMPLES
    split = data_lib.split_indices(config, raw)
    expected = stl10_folds.fold_positions(folds, 3, MOCK_EXAMPLES)
    np.testing.assert_array_equal(split.labeled, np.sort(expected))
    assert len(split.validation) == 50 and not set(split.validation) & set(split.labeled)
    ssl = data_lib.split_dataset(raw, split)
    pool_unlabeled = MOCK_EXAMPLES - 40 - 50
    assert len(ssl.unlabeled_images) == pool_unlabeled + MOCK_EXAMPLES
    assert np.all(ssl.unlabeled_labels[pool_unlabeled:] == -1)


def test_stl10_without_fold_file_names_the_prepare_command(mock_tfds, tmp_path):
    config = scaled_config("stl10", 1000, 50, tmp_path)
    raw = data_lib.load_raw(config)
    with pytest.raises(DataError, match="python -m meta_semi_jax.data prepare stl10"):
        data_lib.split_indices(config, raw)


def test_missing_data_names_the_dataset_the_directory_and_the_command(tmp_path):
    config = scaled_config("cifar10", 100, 100, tmp_path)
    with pytest.raises(DataError) as error:
        data_lib.load_raw(config)
    message = str(error.value)
    assert "\n" not in message and "'cifar10'" in message and str(tmp_path) in message
    assert f"python -m meta_semi_jax.data prepare cifar10 --data_dir={tmp_path}" in message


def test_unknown_tfds_dataset_and_wrong_features_are_refused(tmp_path):
    config = scaled_config("cifar10", 100, 100, tmp_path)
    config.dataset = "tfds:no_such_dataset_anywhere"
    with pytest.raises(DataError, match="tfds knows no dataset named 'no_such_dataset_anywhere'"):
        data_lib.dataset_facts(config)
    config.dataset = "tfds:imdb_reviews"
    with pytest.raises(DataError, match="needs an 'image' Image feature"):
        data_lib.dataset_facts(config)


def test_user_tfds_dataset_with_its_own_splits(mock_tfds, tmp_path):
    config = scaled_config("cifar10", 100, 100, tmp_path)
    config.dataset, config.tfds_train_split, config.tfds_test_split = "tfds:mnist", "train", "test"
    assert data_lib.dataset_facts(config) == (10, (28, 28, 1))
    raw = data_lib.load_raw(config)
    assert raw.train_images.shape == (MOCK_EXAMPLES, 28, 28, 1)


def short_run_config(tmp_path):
    config = scaled_config("cifar10", 100, 100, tmp_path)
    config.model = "small_cnn"  # CNN-13 is too slow for a CPU test; the data path is real
    config.labeled_batch_size, config.unlabeled_batch_size = 16, 48
    config.num_train_steps, config.eval_every_steps, config.log_every_steps = 4, 2, 2
    config.eval_batch_size = 100
    config.selection_probe_size = 0  # a diagnostic with a program of its own
    return config


def test_main_trains_on_mocked_cifar10(mock_tfds, tmp_path):
    workdir = tmp_path / "run"
    results = train.train_and_evaluate(short_run_config(tmp_path), str(workdir))
    assert results["dataset"] == "cifar10" and results["step"] == 4
    assert 0.0 <= results["test_error"] <= 100.0
    split = json.loads((workdir / "split.json").read_text())
    assert split["hash"] == results["split_hash"] and len(split["labeled"]) == 100
    # The same workdir refuses a different split instead of mixing two runs.
    other = short_run_config(tmp_path)
    other.split_seed = 1
    with pytest.raises(ConfigError, match="use another --workdir"):
        train.train_and_evaluate(other, str(workdir))


def run_steps(config, ssl, num_steps=3):
    training = build.build_training(config, ssl)
    state, data = training.state, build.place_data(training.dp, ssl, config)
    with jax.transfer_guard("disallow"):  # no implicit host<->device copy in a step
        for _ in range(num_steps):
            state, _ = training.step_fn(state, data, training.run_key)
    return training.dp.unreplicate(state.params)


def test_hidden_labels_of_the_unlabeled_set_do_not_change_training(mock_tfds, tmp_path):
    config = short_run_config(tmp_path)
    raw = data_lib.load_raw(config)
    ssl = data_lib.split_dataset(raw, data_lib.split_indices(config, raw))
    permuted = ssl.unlabeled_labels[np.random.default_rng(0).permutation(len(ssl.unlabeled_labels))]
    assert not np.array_equal(permuted, ssl.unlabeled_labels)
    reference = run_steps(config, ssl)
    shuffled = run_steps(config, dataclasses.replace(ssl, unlabeled_labels=permuted))
    jax.tree.map(np.testing.assert_array_equal, reference, shuffled)


@pytest.mark.slow  # two programs of its own, shard_map and pmap (CI runs it)
def test_sharded_unlabeled_pool_each_device_holds_a_quarter(mock_tfds, tmp_path):
    """With unlabeled_placement='sharded' each of 4 devices holds 1/4 of the unlabeled pool
    and the step runs under shard_map and pmap with the same result."""
    config = short_run_config(tmp_path)
    config.unlabeled_placement = "sharded"
    raw = data_lib.load_raw(config)
    ssl = data_lib.split_dataset(raw, data_lib.split_indices(config, raw))
    training = build.build_training(config, ssl)
    pool = build.place_data(training.dp, ssl, config).unlabeled_images
    assert len(pool.addressable_shards) == 4
    assert ({shard.data.shape[0] for shard in pool.addressable_shards}
            == {len(ssl.unlabeled_images) // 4})
    shard_map_params = run_steps(config, ssl)
    config.parallel = "pmap"
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 shard_map_params, run_steps(config, ssl))
