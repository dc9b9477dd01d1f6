"""Fashion-MNIST: the IDX reader on files the tests write, the dataset read from IDX files
or through tfds (``tfds.testing.mock_data``), its split protocol, and the real files of
Debian's ``dataset-fashion-mnist`` where they are installed."""
from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from meta_semi_jax import data as data_lib
from meta_semi_jax.data import DataError, fashion_mnist
from meta_semi_jax.data.idx import read_idx
from tests.run_files import load_config, one_line_refusal

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, typed in from the format: 0, 0, type code, number of
    dimensions, each dimension as a big-endian uint32, then the big-endian values."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, TYPE_CODES[big_endian.dtype], array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + big_endian.tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray, gzipped: bool = False) -> pathlib.Path:
    content = idx_bytes(array)
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


ARRAYS = [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([[-300, 7], [32767, -32768]], np.int16),
    np.array([1.5, -2.25, 1e300], np.float64),
    np.array([-5, 0, 100], np.int8),
    np.array([[1 << 30, -7]], np.int32),
    np.array([0.5, -3.0], np.float32),
]


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("array", ARRAYS, ids=[str(a.dtype) for a in ARRAYS])
def test_idx_reader_returns_the_array_written(tmp_path, array, gzipped):
    read = read_idx(str(write_idx(tmp_path / "a-idx", array, gzipped)))
    assert read.dtype == array.dtype and read.shape == array.shape
    np.testing.assert_array_equal(read, array)


BAD_IDX = [  # (content, words of the error)
    (b"\x08\x03\x00\x00" + bytes(16), ["not an IDX file", "0x08030000", "0x00 0x00"]),
    (b"\x00\x00\x07\x01" + bytes(8), ["not an IDX file", "0x00000701", "0x08 uint8"]),
    (b"", ["not an IDX file", "missing (the file is empty)"]),
    (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], ["truncated", "(3, 4)", "12 bytes", "11"]),
    (idx_bytes(np.zeros((3, 4), np.uint8))[:9], ["truncated", "2 dimensions", "9 bytes"]),
    (idx_bytes(np.zeros(3, np.int16)) + b"\x00", ["too long", "(3,)", "6 bytes", "7"]),
]


@pytest.mark.parametrize("content,words", BAD_IDX, ids=[w[0] + str(i) for i, (_, w) in
                                                       enumerate(BAD_IDX)])
def test_bad_idx_file_is_refused_in_one_line_naming_it(tmp_path, content, words):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_idx(str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    assert all(word in message for word in words), message


def test_damaged_gzip_is_refused(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(DataError, match="damaged gzip file"):
        read_idx(str(path))


# A Fashion-MNIST in miniature: 30 training and 4 test images per class, random pixels.
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 4


def fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), count))
    return rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels


def write_fake_fashion_mnist(directory: pathlib.Path):
    """The four files under Debian's names: training files gzipped, test files plain."""
    (train_x, train_y), (test_x, test_y) = fake_split(TRAIN_PER_CLASS, 0), \
        fake_split(TEST_PER_CLASS, 1)
    write_idx(directory / "train-images-idx3-ubyte.gz", train_x, gzipped=True)
    write_idx(directory / "train-labels-idx1-ubyte.gz", train_y, gzipped=True)
    write_idx(directory / "t10k-images-idx3-ubyte", test_x)
    write_idx(directory / "t10k-labels-idx1-ubyte", test_y)
    return train_x, train_y, test_x, test_y


def fashion_config(data_dir: pathlib.Path | str, num_labels: int = 50,
                   num_validation: int = 100):
    config = load_config("fashion_mnist", str(num_labels))
    config.data_dir, config.num_validation = str(data_dir), num_validation
    return config


def test_idx_files_in_data_dir_are_read_and_split_like_cifar(tmp_path):
    train_x, train_y, test_x, test_y = write_fake_fashion_mnist(tmp_path)
    config = fashion_config(tmp_path)
    assert data_lib.dataset_facts(config) == (10, (28, 28, 1))
    raw = data_lib.load_raw(config)
    np.testing.assert_array_equal(raw.train_images, train_x[..., None])
    np.testing.assert_array_equal(raw.train_labels, train_y)
    np.testing.assert_array_equal(raw.test_images, test_x[..., None])
    np.testing.assert_array_equal(raw.test_labels, test_y)
    assert raw.train_labels.dtype == np.int32 and raw.num_classes == 10
    split = data_lib.split_indices(config, raw)
    np.testing.assert_array_equal(np.bincount(train_y[split.validation], minlength=10), 10)
    np.testing.assert_array_equal(np.bincount(train_y[split.labeled], minlength=10), 5)
    assert not set(split.labeled) & set(split.validation)
    # Every non-validation training image is unlabeled, the labeled ones included (ICT's
    # reading of "all other samples", as the CNN-13 configs).
    np.testing.assert_array_equal(split.unlabeled,
                                  np.setdiff1d(np.arange(len(train_y)), split.validation))
    ssl = data_lib.split_dataset(raw, split)
    np.testing.assert_allclose(ssl.mean, [train_x.mean()], rtol=1e-6)
    np.testing.assert_allclose(ssl.std, [train_x.std()], rtol=1e-6)


def test_a_missing_idx_file_is_named(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as error:
        data_lib.load_raw(fashion_config(tmp_path))
    assert "lacks t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz)" in str(error.value)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(40, 10, np.uint8))
    with pytest.raises(DataError, match=r"must hold 40 uint8 labels in 0-9"):
        data_lib.load_raw(fashion_config(tmp_path))


def test_without_idx_files_fashion_mnist_is_read_through_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=200):
        raw = data_lib.load_raw(fashion_config(tmp_path))
    assert raw.train_images.shape == (200, 28, 28, 1) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (200, 28, 28, 1) and raw.num_classes == 10


def test_without_idx_files_or_tfds_both_ways_are_named(tmp_path):
    with pytest.raises(DataError) as error:
        data_lib.load_raw(fashion_config(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"no IDX files in {tmp_path}" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert f"python -m meta_semi_jax.data prepare fashion_mnist --data_dir={tmp_path}" in message


def test_a_truncated_idx_file_stops_the_program_with_one_line(tmp_path):
    """The command line: exit status 2, one line, the workdir untouched."""
    write_fake_fashion_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-28])
    line = one_line_refusal(tmp_path / "run", "--config=configs/fashion_mnist.py:50",
                            f"--config.data_dir={tmp_path}", "--config.num_validation=100")
    assert line.startswith(f"error: {images} is truncated"), line


REAL = pathlib.Path(fashion_mnist.DEFAULT_DIR)
needs_real_files = pytest.mark.skipif(
    not fashion_mnist.has_idx_files(str(REAL)),
    reason=f"Fashion-MNIST's IDX files are not in {REAL} "
           f"({fashion_mnist.INSTALL_COMMAND} installs them)")


@pytest.fixture(scope="module")
def real_fashion_mnist():
    return data_lib.load_raw(fashion_config(""))  # '' reads Debian's folder


@needs_real_files
def test_real_fashion_mnist_has_its_published_sizes(real_fashion_mnist):
    raw = real_fashion_mnist
    assert raw.train_images.shape == (60_000, 28, 28, 1)
    assert raw.test_images.shape == (10_000, 28, 28, 1)
    assert raw.train_images.dtype == np.uint8 and raw.num_classes == 10
    np.testing.assert_array_equal(np.bincount(raw.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(raw.test_labels), [1000] * 10)
    # The first training images are an ankle boot, two T-shirts and a dress (Zalando's
    # README shows them), and the pixels span 0-255.
    np.testing.assert_array_equal(raw.train_labels[:4], [9, 0, 0, 3])
    assert raw.train_images.min() == 0 and raw.train_images.max() == 255
