"""The real tfds path without mocks: a tiny dataset builder is prepared as array_record by
``python -m meta_semi_jax.data prepare``'s function, then read back by the loader.

The images encode their generator key, so the test also checks the record order that
STL-10's fold mapping and Fashion-MNIST's file order rely on: key k sits at
``file_index_to_tfds_position(n)[k]``.
"""
from __future__ import annotations

import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from meta_semi_jax import data as data_lib
from meta_semi_jax.config_base import base_config
from meta_semi_jax.data import stl10_folds, tfds_data
from meta_semi_jax.data.__main__ import prepare

NUM_TRAIN, NUM_TEST = 240, 60


def png_of_key(key: int) -> bytes:
    """An 8x8 grey image whose first two pixels spell the key (base 256)."""
    pixels = np.zeros((8, 8), np.uint8)
    pixels[0, 0], pixels[0, 1] = key // 256, key % 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class TinyKeyedDigits(tfds.core.GeneratorBasedBuilder):
    """Registered with tfds as ``tiny_keyed_digits``."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(range(NUM_TRAIN)),
                "test": self._generate_examples(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))}

    def _generate_examples(self, keys):
        for key in keys:
            yield key, {"image": png_of_key(key), "label": key % 10}


@pytest.fixture(scope="session")  # kept while the worker runs other files
def prepared_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    prepare("tfds:tiny_keyed_digits", data_dir)
    return data_dir


def config_for(data_dir: str) -> ml_collections.ConfigDict:
    config = base_config()
    config.dataset, config.data_dir = "tfds:tiny_keyed_digits", data_dir
    config.num_labels, config.num_validation = 20, 20
    return config


def keys_of(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0].astype(int)


def test_prepared_dataset_is_read_back_without_tensorflow(prepared_dir):
    config = config_for(prepared_dir)
    assert data_lib.dataset_facts(config) == (10, (8, 8, 1))
    raw = data_lib.load_raw(config)
    assert raw.train_images.shape == (NUM_TRAIN, 8, 8, 1) and raw.train_images.dtype == np.uint8
    train_keys = keys_of(raw.train_images)
    np.testing.assert_array_equal(np.sort(train_keys), np.arange(NUM_TRAIN))
    np.testing.assert_array_equal(raw.train_labels, train_keys % 10)
    np.testing.assert_array_equal(np.sort(keys_of(raw.test_images)),
                                  np.arange(NUM_TRAIN, NUM_TRAIN + NUM_TEST))


def test_records_are_in_the_order_the_fold_mapping_assumes(prepared_dir):
    raw = data_lib.load_raw(config_for(prepared_dir))
    positions = tfds_data.file_index_to_tfds_position(NUM_TRAIN, "train")
    train_keys = keys_of(raw.train_images)
    np.testing.assert_array_equal(train_keys[positions], np.arange(NUM_TRAIN))
    assert not np.array_equal(train_keys, np.arange(NUM_TRAIN))  # tfds did reorder them


def test_a_split_keyed_by_file_index_is_read_back_in_file_order(prepared_dir):
    """How Fashion-MNIST's tfds path returns the IDX files' order (its builder keys each
    split's examples 0, 1, ...; here the training split is keyed that way)."""
    source = tfds_data.tfds_source("tfds:tiny_keyed_digits")
    images, labels = tfds_data.read_split_in_file_order("tfds:tiny_keyed_digits", source,
                                                        "train", prepared_dir)
    np.testing.assert_array_equal(keys_of(images), np.arange(NUM_TRAIN))
    np.testing.assert_array_equal(labels, np.arange(NUM_TRAIN) % 10)


def test_fold_file_round_trip(tmp_path):
    folds = np.arange(10 * 6).reshape(10, 6)
    archive = tmp_path / "archive" / "stl10_binary"
    archive.mkdir(parents=True)
    (archive / "fold_indices.txt").write_text(
        "\n".join(" ".join(map(str, row)) for row in folds) + "\n")
    saved = stl10_folds.save_fold_file(str(tmp_path / "archive"), str(tmp_path / "data"))
    assert saved == stl10_folds.fold_file_path(str(tmp_path / "data"))
    positions = stl10_folds.load_fold_positions(str(tmp_path / "data"), 4, 100)
    expected = tfds_data.file_index_to_tfds_position(100, "train")[folds[4]]
    np.testing.assert_array_equal(positions, np.sort(expected))
    with pytest.raises(ValueError, match="folds 0-9"):
        stl10_folds.load_fold_positions(str(tmp_path / "data"), 10, 100)
    with pytest.raises(FileNotFoundError, match="prepare stl10"):
        stl10_folds.load_fold_positions(str(tmp_path / "elsewhere"), 0, 100)
    with pytest.raises(ValueError, match="10 lines"):
        stl10_folds.parse_fold_indices("1 2 3\n4 5 6\n")
