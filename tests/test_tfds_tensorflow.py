"""Data prepared only as tfrecord: read with ``tfds.load`` when TensorFlow is installed,
refused with the prepare command when it is not.

Needs TensorFlow (to write tfrecord files), which the default test environment does
not install; run with ``pip install -e .[prepare] && python -m pytest -q -m tensorflow``.
"""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import tensorflow_datasets as tfds  # noqa: E402

from meta_semi_jax.data import DataError, tfds_data  # noqa: E402

pytestmark = pytest.mark.tensorflow
SPLIT_SIZES = {"train": 40, "test": 10}


def split_examples(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SIZES[split])
    images = rng.integers(0, 256, (SPLIT_SIZES[split], 8, 8, 3), dtype=np.uint8)
    return images, rng.integers(0, 3, SPLIT_SIZES[split])


class TinyRecords(tfds.core.GeneratorBasedBuilder):
    """Random 8x8 colour images with 3 classes, prepared as tfrecord."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split):
        for i, (image, label) in enumerate(zip(*split_examples(split), strict=True)):
            yield i, {"image": image, "label": label}


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyRecords(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
    return data_dir


def as_sorted(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    """The examples as a multiset: tfds stores them in its own (hashed) order."""
    return sorted((int(label), image.tobytes())
                  for image, label in zip(images, labels, strict=True))


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfrecord_data_is_read_with_tfds_load(tfrecord_dir, split):
    source = tfds_data.tfds_source("tfds:tiny_records")
    images, labels = tfds_data.read_split("tfds:tiny_records", source, split, tfrecord_dir)
    assert images.dtype == np.uint8 and images.shape == (SPLIT_SIZES[split], 8, 8, 3)
    assert labels.dtype == np.int32
    assert as_sorted(images, labels) == as_sorted(*split_examples(split))


def test_tfrecord_data_without_tensorflow_names_the_prepare_command(tfrecord_dir,
                                                                     monkeypatch):
    monkeypatch.setattr(tfds_data, "_tensorflow_available", lambda: False)
    source = tfds_data.tfds_source("tfds:tiny_records")
    with pytest.raises(DataError, match="as tfrecord, which only TensorFlow reads") as error:
        tfds_data.read_split("tfds:tiny_records", source, "train", tfrecord_dir)
    assert "python -m meta_semi_jax.data prepare tfds:tiny_records" in str(error.value)
