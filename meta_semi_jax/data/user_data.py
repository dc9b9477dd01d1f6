"""Your own data, without TensorFlow: ``npz:PATH`` or ``folder:DIR``.

``npz:PATH`` is a NumPy archive (``numpy.savez``) of the arrays ``x_train``, ``y_train``,
``x_test`` and ``y_test``: uint8 images, NHWC or NHW (grey), and integer labels
0..K-1, where K - 1 is the largest training label. ``folder:DIR`` holds image files
(``.png``, ``.jpg``, ``.jpeg``) in ``DIR/train/<class>/`` and ``DIR/test/<class>/``
(other files, and hidden ones, are ignored); the classes are the training folders'
names, sorted, and all images have one size
(grey if every image is, RGB otherwise; read with Pillow). Every class needs training
images, and every test label must be one of the classes. Each problem is a one-line
``DataError`` that names what is wrong and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from meta_semi_jax.data.errors import DataError

NPZ_PREFIX = "npz:"
FOLDER_PREFIX = "folder:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA")
# Pillow modes of 8-bit images, read as grey (GREY_MODES) or converted to RGB.
EIGHT_BIT_MODES = (*GREY_MODES, "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")

# (train images uint8 NHWC, train labels int32, test images, test labels, class count)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def is_user_dataset(dataset: str) -> bool:
    """``npz:<path>`` or ``folder:<dir>``, with a non-empty path."""
    return any(dataset.startswith(prefix) and len(dataset) > len(prefix)
               for prefix in (NPZ_PREFIX, FOLDER_PREFIX))


def check_labels(dataset: str, train_labels: np.ndarray, test_labels: np.ndarray,
                 num_classes: int, class_names: list[str]) -> None:
    """At least two classes, every class has training images and every label is one of
    the classes."""
    if num_classes < 2:
        plural = "" if num_classes == 1 else "es"
        raise DataError(f"config.dataset={dataset!r}: the training set has {num_classes} "
                        f"class{plural}; it needs at least 2")
    counts = np.bincount(train_labels[(train_labels >= 0) & (train_labels < num_classes)],
                         minlength=num_classes)
    allowed = f"labels must be in 0-{num_classes - 1}, the classes"
    for split, labels in (("training", train_labels), ("test", test_labels)):
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise DataError(f"config.dataset={dataset!r}: {split} label {outside[0]} is "
                            f"outside the classes: {allowed}")
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(f"config.dataset={dataset!r}: class {class_names[empty[0]]} has no "
                        f"training images; every class needs some ({allowed})")


# ---- npz:PATH


def npz_member(dataset: str, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"config.dataset={dataset!r}: cannot read {key}: {e}") from None


def check_npz_images(dataset: str, key: str, images: np.ndarray) -> np.ndarray:
    """uint8 NHWC or NHW images, as NHWC."""
    allowed = "images must be uint8, of shape (N, H, W, C) or (N, H, W) (grey)"
    if images.dtype != np.uint8:
        raise DataError(f"config.dataset={dataset!r}: {key} has dtype {images.dtype}; "
                        f"{allowed}")
    if images.ndim not in (3, 4) or 0 in images.shape:
        raise DataError(f"config.dataset={dataset!r}: {key} has shape {images.shape}; "
                        f"{allowed}, none of them 0")
    return images if images.ndim == 4 else images[..., None]


def check_npz_labels(dataset: str, key: str, labels: np.ndarray, count: int) -> np.ndarray:
    """One integer label per image, as int32."""
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"config.dataset={dataset!r}: {key} has dtype {labels.dtype} and "
                        f"shape {labels.shape}; it must hold {count} integer labels, one per "
                        f"image, shape ({count},)")
    return labels.astype(np.int32)


def read_npz(dataset: str) -> Arrays:
    """The checked arrays of ``npz:PATH``."""
    path = os.path.expanduser(dataset[len(NPZ_PREFIX):])
    if not os.path.isfile(path):
        raise DataError(f"config.dataset={dataset!r}: no such file {path}; npz:PATH names a "
                        f"NumPy .npz archive of {', '.join(NPZ_KEYS)}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile):
        archive = None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"config.dataset={dataset!r}: {path} is not a NumPy .npz archive "
                        f"(numpy.savez) of {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DataError(f"config.dataset={dataset!r}: {path} lacks {', '.join(missing)}; "
                            f"it must hold {', '.join(NPZ_KEYS)}")
        x_train, y_train, x_test, y_test = (npz_member(dataset, archive, key)
                                            for key in NPZ_KEYS)
    x_train = check_npz_images(dataset, "x_train", x_train)
    x_test = check_npz_images(dataset, "x_test", x_test)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"config.dataset={dataset!r}: x_test's images are "
                        f"{x_test.shape[1:]} (H, W, C) and x_train's {x_train.shape[1:]}; "
                        f"all images must have one shape")
    y_train = check_npz_labels(dataset, "y_train", y_train, len(x_train))
    y_test = check_npz_labels(dataset, "y_test", y_test, len(x_test))
    num_classes = max(int(y_train.max()) + 1, 1)
    check_labels(dataset, y_train, y_test, num_classes, [str(c) for c in range(num_classes)])
    return x_train, y_train, x_test, y_test, num_classes


# ---- folder:DIR


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The image files of ``folder:DIR`` with their labels, checked from the files'
    headers: one size for all, and the Pillow mode they are read in."""
    classes: list[str]
    train_files: list[tuple[str, int]]
    test_files: list[tuple[str, int]]
    image_shape: tuple[int, int, int]
    mode: str  # "L" or "RGB"


def visible_entries(directory: str) -> list[str]:
    """The names in ``directory``, sorted, without hidden ones (``.ipynb_checkpoints``,
    macOS's ``._*`` files)."""
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def image_files(directory: str) -> list[str]:
    """The PNG and JPEG files of ``directory``, sorted by name."""
    return [os.path.join(directory, name) for name in visible_entries(directory)
            if name.lower().endswith(IMAGE_SUFFIXES)
            and os.path.isfile(os.path.join(directory, name))]


def class_folders(directory: str) -> list[str]:
    return [name for name in visible_entries(directory)
            if os.path.isdir(os.path.join(directory, name))]


def split_folder(dataset: str, root: str, split: str) -> str:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"config.dataset={dataset!r}: no folder {path}; folder:DIR needs "
                        f"DIR/train/<class>/*.png|jpg and DIR/test/<class>/*.png|jpg")
    return path


def labelled_files(dataset: str, root: str, classes: list[str]) -> list[tuple[str, int]]:
    """(file, label) of every image under ``root/<class>/``; a folder that is not one of
    ``classes`` is refused."""
    files = []
    for name in class_folders(root):
        if name not in classes:
            raise DataError(f"config.dataset={dataset!r}: {os.path.join(root, name)} is not "
                            f"one of the training classes ({', '.join(classes)})")
        files += [(path, classes.index(name)) for path in image_files(os.path.join(root, name))]
    return files


def image_header(dataset: str, path: str) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of an image file, read from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
    except (UnidentifiedImageError, OSError):
        raise DataError(f"config.dataset={dataset!r}: cannot read {path} as an image; "
                        f"folder:DIR holds PNG or JPEG files") from None
    if mode not in EIGHT_BIT_MODES:
        raise DataError(f"config.dataset={dataset!r}: {path} has Pillow mode {mode}; images "
                        f"must have 8 bits per channel (grey, RGB or RGBA)")
    return size, mode


def scan_folder(dataset: str) -> ImageFolder:
    """The checked file lists of ``folder:DIR``, from the files' headers only."""
    root = os.path.expanduser(dataset[len(FOLDER_PREFIX):])
    train_root = split_folder(dataset, root, "train")
    test_root = split_folder(dataset, root, "test")
    classes = class_folders(train_root)
    train_files = labelled_files(dataset, train_root, classes)
    test_files = labelled_files(dataset, test_root, classes)
    labels = np.asarray([label for _, label in train_files], np.int32)
    check_labels(dataset, labels, np.zeros(0, np.int32), len(classes), classes)
    if not test_files:
        raise DataError(f"config.dataset={dataset!r}: {test_root} holds no images; it needs "
                        f"test/<class>/*.png|jpg")
    headers = [(path, *image_header(dataset, path)) for path, _ in train_files + test_files]
    first_path, (width, height), _ = headers[0]
    for path, size, _ in headers:
        if size != (width, height):
            raise DataError(f"config.dataset={dataset!r}: {path} is {size[0]}x{size[1]} and "
                            f"{first_path} {width}x{height}; all images must have one size")
    grey = all(mode in GREY_MODES for _, _, mode in headers)
    return ImageFolder(classes, train_files, test_files,
                       (height, width, 1 if grey else 3), "L" if grey else "RGB")


def read_image(path: str, mode: str | None = None) -> np.ndarray:
    """The pixels of the image file ``path``, uint8 (H, W, C), in Pillow ``mode``: "L"
    (C = 1) or "RGB" (C = 3); by default grey images (``GREY_MODES``) in "L" and the
    other 8-bit ones in "RGB". Raises ``OSError`` (Pillow's ``UnidentifiedImageError``
    is one) for a file Pillow cannot read and ``ValueError`` for one whose mode is not
    8-bit (``EIGHT_BIT_MODES``)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in EIGHT_BIT_MODES:
            raise ValueError(f"{path} has Pillow mode {image.mode}; images must have 8 bits "
                             f"per channel (grey, RGB or RGBA)")
        own_mode = "L" if image.mode in GREY_MODES else "RGB"
        pixels = np.asarray(image.convert(mode or own_mode))
    return pixels.reshape(*pixels.shape[:2], -1)


def decode_images(files: list[tuple[str, int]], folder: ImageFolder
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The files' pixels (uint8 NHWC, in ``folder.mode``) and labels (int32)."""
    images = np.empty((len(files), *folder.image_shape), np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = read_image(path, folder.mode)
    return images, np.asarray([label for _, label in files], np.int32)


def read_folder(dataset: str) -> Arrays:
    """The checked arrays of ``folder:DIR``."""
    folder = scan_folder(dataset)
    return (*decode_images(folder.train_files, folder),
            *decode_images(folder.test_files, folder), len(folder.classes))


def facts(dataset: str) -> tuple[int, tuple[int, ...]]:
    """(class count, image shape) of a user dataset; also checks it."""
    if dataset.startswith(FOLDER_PREFIX):
        folder = scan_folder(dataset)
        return len(folder.classes), folder.image_shape
    x_train, _, _, _, num_classes = read_npz(dataset)
    return num_classes, x_train.shape[1:]


def read(dataset: str) -> Arrays:
    """The checked arrays of a user dataset."""
    return read_folder(dataset) if dataset.startswith(FOLDER_PREFIX) else read_npz(dataset)
