"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 70,000 28x28 grey images of 10 clothing
classes, 60,000 for training and 10,000 for testing.

Read offline from Zalando's original IDX files, plain or gzipped, which Debian's
package ``dataset-fashion-mnist`` installs in ``DEFAULT_DIR``
(``--config.data_dir`` names another folder holding them); where that folder has none of
them the program reads tfds' ``fashion_mnist`` prepared under ``data_dir``
(``tfds_data.TFDS_SOURCES``).
"""
from __future__ import annotations

import os

import numpy as np

from meta_semi_jax.data.errors import DataError
from meta_semi_jax.data.idx import read_idx

NAME = "fashion_mnist"
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
# label -> name, from the dataset's README (Xiao, Rasul & Vollgraf, 2017)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_COMMAND = "apt-get install -y dataset-fashion-mnist"
# split -> (images file, labels file), each also found with a ".gz" suffix
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_dir(data_dir: str) -> str:
    """The folder the IDX files are read from: ``data_dir``, or Debian's by default."""
    return os.path.expanduser(data_dir) if data_dir else DEFAULT_DIR


def find_idx_file(directory: str, name: str) -> str | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def has_idx_files(directory: str) -> bool:
    """Whether ``directory`` holds any of the four IDX files (then all must be there)."""
    return any(find_idx_file(directory, name) is not None
               for names in IDX_FILES.values() for name in names)


def read_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (uint8 NHWC, N x 28 x 28 x 1) and labels (int32 in 0-9)."""
    paths = []
    for name in IDX_FILES[split]:
        path = find_idx_file(directory, name)
        if path is None:
            raise DataError(f"dataset 'fashion_mnist': {directory} lacks {name} (or "
                            f"{name}.gz); it needs {', '.join(sum(IDX_FILES.values(), ()))}")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[:2]:
        raise DataError(f"{paths[0]} holds {images.dtype.name} of shape {images.shape}; "
                        f"Fashion-MNIST's images are uint8 of shape (N, 28, 28)")
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8 or (
            labels.size and labels.max() >= NUM_CLASSES):
        raise DataError(f"{paths[1]} holds {labels.dtype.name} of shape {labels.shape}; "
                        f"it must hold {len(images)} uint8 labels in 0-{NUM_CLASSES - 1}, "
                        f"one per image of {paths[0]}")
    return images[..., None], labels.astype(np.int32)


def missing_message(directory: str, tfds_message: str) -> str:
    """Where Fashion-MNIST was looked for, and the two ways to provide it."""
    return (f"dataset 'fashion_mnist' has no IDX files in {directory} (install them with: "
            f"{INSTALL_COMMAND}; or name their folder with --config.data_dir), and through "
            f"tfds: {tfds_message}")
