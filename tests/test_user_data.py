"""Your own data: ``npz:PATH`` and ``folder:DIR`` on tiny datasets the tests write, read
back exactly, split and normalised like the built-in datasets, and every malformed one
refused in one line before anything is computed or written."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image

from meta_semi_jax import data as data_lib, train
from meta_semi_jax.config_check import ConfigError, check_config
from meta_semi_jax.data import DataError
from tests.run_files import load_config, one_line_refusal

NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 12, 2
HEIGHT, WIDTH = 6, 5  # not square, so that H and W cannot be swapped unnoticed


def images_and_labels(per_class: int, channels: int | None, seed: int):
    """Random uint8 images (NHW when ``channels`` is None) with shuffled labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
    shape = (len(labels), HEIGHT, WIDTH) + (() if channels is None else (channels,))
    return rng.integers(0, 256, shape, dtype=np.uint8), labels


def user_config(dataset: str, num_labels: int = 6, num_validation: int = 6):
    config = load_config("digits", str(num_labels))
    config.dataset, config.num_validation = dataset, num_validation
    return config


def assert_protocol(config, raw, train_labels):
    """Validation and labels evenly per class, every other training image unlabeled,
    per-channel statistics of the training pool."""
    split = data_lib.split_indices(config, raw)
    for part, per_class in ((split.validation, 2), (split.labeled, 2)):
        np.testing.assert_array_equal(
            np.bincount(train_labels[part], minlength=NUM_CLASSES), per_class)
    excluded = np.concatenate([split.validation, split.labeled])
    np.testing.assert_array_equal(split.unlabeled,
                                  np.setdiff1d(np.arange(len(train_labels)), excluded))
    ssl = data_lib.split_dataset(raw, split)
    pixels = raw.train_images.reshape(-1, raw.train_images.shape[-1])
    np.testing.assert_allclose(ssl.mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ssl.std, pixels.std(0), rtol=1e-6)


# ---- npz:PATH

def write_npz(path: pathlib.Path, channels: int | None = None, **replace) -> pathlib.Path:
    x_train, y_train = images_and_labels(TRAIN_PER_CLASS, channels, 0)
    x_test, y_test = images_and_labels(TEST_PER_CLASS, channels, 1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_npz_arrays_are_read_back_and_split(tmp_path, channels):
    path = write_npz(tmp_path / "mine.npz", channels)
    config = user_config(f"npz:{path}")
    expected_channels = channels or 1
    assert data_lib.dataset_facts(config) == (NUM_CLASSES, (HEIGHT, WIDTH, expected_channels))
    raw = data_lib.load_raw(config)
    with np.load(path) as written:
        shape = (-1, HEIGHT, WIDTH, expected_channels)
        np.testing.assert_array_equal(raw.train_images, written["x_train"].reshape(shape))
        np.testing.assert_array_equal(raw.test_images, written["x_test"].reshape(shape))
        np.testing.assert_array_equal(raw.train_labels, written["y_train"])
        np.testing.assert_array_equal(raw.test_labels, written["y_test"])
    assert raw.train_labels.dtype == np.int32 and raw.num_classes == NUM_CLASSES
    assert_protocol(config, raw, raw.train_labels)


def labels_with(value: int, count: int) -> np.ndarray:
    labels = np.repeat(np.arange(NUM_CLASSES), count // NUM_CLASSES)
    labels[0] = value
    return labels


BAD_NPZ = [  # (arrays replaced, None removes one; words of the error)
    ({"x_train": np.zeros((36, HEIGHT, WIDTH), np.float32)},
     ["x_train has dtype float32", "must be uint8"]),
    ({"x_train": np.zeros((36, HEIGHT * WIDTH), np.uint8)},
     ["x_train has shape (36, 30)", "(N, H, W, C) or (N, H, W)"]),
    ({"x_test": np.zeros((6, WIDTH, HEIGHT), np.uint8)},
     ["x_test's images are (5, 6, 1)", "(6, 5, 1)", "one shape"]),
    ({"y_train": np.zeros(35, np.int64)}, ["y_train", "shape (35,)", "36 integer labels"]),
    ({"y_test": np.zeros(6, np.float32)}, ["y_test has dtype float32", "integer labels"]),
    ({"y_train": labels_with(4, 36)}, ["class 3 has no training images", "0-4"]),
    ({"y_test": labels_with(7, 6)}, ["test label 7 is outside the classes", "0-2"]),
    ({"y_train": labels_with(-1, 36)}, ["training label -1 is outside the classes", "0-2"]),
    ({"y_train": np.zeros(36, np.int64)}, ["1 class", "at least 2"]),
    ({"x_test": None}, ["lacks x_test", "x_train, y_train, x_test, y_test"]),
]


@pytest.mark.parametrize("replace,words", BAD_NPZ, ids=[w[0] for _, w in BAD_NPZ])
def test_malformed_npz_is_refused_in_one_line(tmp_path, replace, words):
    path = write_npz(tmp_path / "bad.npz", **replace)
    with pytest.raises(DataError) as error:
        data_lib.dataset_facts(user_config(f"npz:{path}"))
    message = str(error.value)
    assert "\n" not in message and f"npz:{path}" in message, message
    assert all(word in message for word in words), message


def test_missing_or_foreign_npz_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such file .*nowhere.npz; npz:PATH names"):
        data_lib.load_raw(user_config(f"npz:{tmp_path / 'nowhere.npz'}"))
    not_npz = tmp_path / "notes.npz"
    not_npz.write_text("not an archive")
    with pytest.raises(DataError, match=r"is not a NumPy \.npz archive"):
        data_lib.load_raw(user_config(f"npz:{not_npz}"))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataError, match=r"is not a NumPy \.npz archive"):
        data_lib.load_raw(user_config(f"npz:{single}"))


def test_user_data_goes_through_the_programs_checks_before_anything_is_written(tmp_path):
    """The split's checks against the data (here: more labels than a class holds after
    validation) and the data's own, through the function ``main`` runs."""
    path = write_npz(tmp_path / "mine.npz")
    workdir = tmp_path / "run"
    workdir.mkdir()
    with pytest.raises(ConfigError, match="at most 10 labels per class"):
        train.train_and_evaluate(user_config(f"npz:{path}", num_labels=33), str(workdir))
    bad = write_npz(tmp_path / "bad.npz", y_test=labels_with(9, 6))
    with pytest.raises(DataError, match="test label 9 is outside the classes"):
        train.train_and_evaluate(user_config(f"npz:{bad}"), str(workdir))
    assert not any(workdir.iterdir())


def test_npz_with_a_wrong_shape_stops_the_program_with_one_line(tmp_path):
    """The command line: exit status 2, one line, the workdir untouched."""
    path = write_npz(tmp_path / "flat.npz", x_train=np.zeros((36, 30), np.uint8))
    line = one_line_refusal(tmp_path / "run", "--config=configs/digits.py:6",
                            f"--config.dataset=npz:{path}", "--config.num_validation=6")
    assert "x_train has shape (36, 30)" in line, line


# ---- folder:DIR

CLASS_NAMES = ("shirt", "bag", "boot")  # sorted: bag, boot, shirt


def write_folder(root: pathlib.Path, channels: int | None = None, suffix: str = ".png"):
    """PNG files (lossless) under root/{train,test}/<class>/; returns the written
    (images, labels) of each split in the order the reader must give: classes sorted,
    then file names sorted."""
    written = {}
    for split, per_class, seed in (("train", TRAIN_PER_CLASS, 0), ("test", TEST_PER_CLASS, 1)):
        images, _ = images_and_labels(per_class, channels, seed)
        ordered_images, ordered_labels = [], []
        for label, name in enumerate(sorted(CLASS_NAMES)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = images[label * per_class + i]
                Image.fromarray(image).save(folder / f"{i:03d}{suffix}")
                ordered_images.append(image)
                ordered_labels.append(label)
        shape = (-1, HEIGHT, WIDTH, channels or 1)
        written[split] = np.stack(ordered_images).reshape(shape), np.asarray(ordered_labels)
    return written


@pytest.mark.parametrize("channels", [None, 3])
def test_image_folder_is_read_back_and_split(tmp_path, channels):
    written = write_folder(tmp_path, channels)
    # Ignored: files that are not PNG or JPEG, hidden folders and hidden files.
    (tmp_path / "train" / "bag" / "README.txt").write_text("not an image")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "test" / "bag" / "._000.png").write_text("macOS metadata")
    config = user_config(f"folder:{tmp_path}")
    assert data_lib.dataset_facts(config) == (NUM_CLASSES, (HEIGHT, WIDTH, channels or 1))
    raw = data_lib.load_raw(config)
    np.testing.assert_array_equal(raw.train_images, written["train"][0])
    np.testing.assert_array_equal(raw.train_labels, written["train"][1])
    np.testing.assert_array_equal(raw.test_images, written["test"][0])
    np.testing.assert_array_equal(raw.test_labels, written["test"][1])
    assert raw.num_classes == NUM_CLASSES
    assert_protocol(config, raw, raw.train_labels)


def test_jpeg_files_are_read_too(tmp_path):
    write_folder(tmp_path, 3, suffix=".JPG")
    raw = data_lib.load_raw(user_config(f"folder:{tmp_path}"))
    assert raw.train_images.shape == (NUM_CLASSES * TRAIN_PER_CLASS, HEIGHT, WIDTH, 3)
    assert raw.test_images.shape == (NUM_CLASSES * TEST_PER_CLASS, HEIGHT, WIDTH, 3)


def remove_test_folder(root: pathlib.Path) -> str:
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()
    return str(root / "test")


def empty_a_class(root: pathlib.Path) -> str:
    for path in (root / "train" / "boot").iterdir():
        path.unlink()
    return "class boot has no training images"


def add_a_test_class(root: pathlib.Path) -> str:
    (root / "test" / "hat").mkdir()
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(root / "test" / "hat" / "a.png")
    return "test/hat is not one of the training classes (bag, boot, shirt)"


def add_an_odd_size(root: pathlib.Path) -> str:
    path = root / "train" / "shirt" / "999.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8)).save(path)
    return f"{path} is 6x6 and {root / 'train' / 'bag' / '000.png'} 5x6"


def add_a_broken_file(root: pathlib.Path) -> str:
    path = root / "test" / "bag" / "broken.png"
    path.write_text("not a png")
    return f"cannot read {path} as an image"


def add_a_16_bit_image(root: pathlib.Path) -> str:
    path = root / "train" / "bag" / "deep.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint16)).save(path)
    return "8 bits per channel"


def empty_the_test_set(root: pathlib.Path) -> str:
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    return "holds no images"


BAD_FOLDERS = [remove_test_folder, empty_a_class, add_a_test_class, add_an_odd_size,
               add_a_broken_file, add_a_16_bit_image, empty_the_test_set]


@pytest.mark.parametrize("damage", BAD_FOLDERS, ids=[f.__name__ for f in BAD_FOLDERS])
def test_malformed_image_folder_is_refused_in_one_line(tmp_path, damage):
    write_folder(tmp_path)
    words = damage(tmp_path)
    with pytest.raises(DataError) as error:
        data_lib.dataset_facts(user_config(f"folder:{tmp_path}"))
    message = str(error.value)
    assert "\n" not in message and f"folder:{tmp_path}" in message, message
    assert words in message, message


def test_image_folder_with_mixed_sizes_stops_the_program_with_one_line(tmp_path):
    """The command line: exit status 2, one line, the workdir untouched."""
    data = tmp_path / "data"
    write_folder(data)
    words = add_an_odd_size(data)
    line = one_line_refusal(tmp_path / "run", "--config=configs/digits.py:6",
                            f"--config.dataset=folder:{data}", "--config.num_validation=6")
    assert words in line, line


@pytest.mark.parametrize("dataset", ["npz:", "folder:", "tfds:", "npz", "csv:data.csv"])
def test_dataset_forms_without_a_path_are_refused_by_the_config_check(dataset):
    with pytest.raises(ConfigError, match="npz:<path>, folder:<dir>"):
        check_config(user_config(dataset), 1)
