"""STL-10's predefined folds, mapped onto tfds' record order.

MixMatch's STL-10 protocol (which the paper follows) labels one of the 10 official
folds of 1,000 training images. The folds live in ``fold_indices.txt`` of the
official archive and index the *file order* of ``train_X.bin``. tfds' ``stl10``
builder yields each training image under key = its file index, but writes a split's
records sorted by ``Hasher(salt=split_name).hash_key(key)``, so the file order is
lost. ``tfds_data.file_index_to_tfds_position`` recomputes it with tfds' own hasher.
``python -m meta_semi_jax.data prepare stl10`` saves the fold file next to the data.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from meta_semi_jax.data.tfds_data import file_index_to_tfds_position

ARCHIVE_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
FOLD_FILE_NAME = "stl10_fold_indices.txt"
FOLD_SIZE = 1000
NUM_FOLDS = 10


def fold_file_path(data_dir: str) -> str:
    """Where the fold definitions are kept: ``<data_dir>/stl10/stl10_fold_indices.txt``."""
    return os.path.join(os.path.expanduser(data_dir), "stl10", FOLD_FILE_NAME)


def parse_fold_indices(text: str) -> np.ndarray:
    """``[NUM_FOLDS, fold_size]`` file indices from the text of ``fold_indices.txt``."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) != NUM_FOLDS or len({len(line) for line in lines}) != 1:
        raise ValueError(f"a fold file has {NUM_FOLDS} lines of equally many indices; "
                         f"this one has {len(lines)} lines")
    try:
        return np.asarray(lines, dtype=np.int64)
    except ValueError:
        raise ValueError("a fold file holds whitespace-separated integers only") from None


def fold_positions(fold_indices: np.ndarray, fold: int, num_examples: int,
                   split: str = "train") -> np.ndarray:
    """Sorted tfds positions of the examples of ``fold``."""
    return np.sort(file_index_to_tfds_position(num_examples, split)[fold_indices[fold]])


def save_fold_file(archive_dir: str, data_dir: str) -> str:
    """Copies ``fold_indices.txt`` out of an extracted STL-10 archive; returns its new path."""
    source = os.path.join(archive_dir, "stl10_binary", "fold_indices.txt")
    if not os.path.exists(source):
        raise FileNotFoundError(f"no fold_indices.txt in the STL-10 archive at {archive_dir}")
    target = fold_file_path(data_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    return target


def load_fold_positions(data_dir: str, fold: int, num_examples: int) -> np.ndarray:
    """tfds positions of the training images of STL-10's ``fold`` (0-9)."""
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"STL-10 has folds 0-{NUM_FOLDS - 1}, not {fold}")
    path = fold_file_path(data_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"STL-10's fold definitions are missing at {path}; they are saved by: "
            f"python -m meta_semi_jax.data prepare stl10 --data_dir={data_dir}")
    with open(path) as f:
        return fold_positions(parse_fold_indices(f.read()), fold, num_examples)
