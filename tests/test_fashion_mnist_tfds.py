"""Fashion-MNIST through tfds equals Fashion-MNIST from its IDX files, array for array.

tfds' ``fashion_mnist`` builder is prepared here from Debian's copies of Zalando's
original files (its download served from them through ``DownloadConfig.manual_dir``).
Debian recompressed the gzip files, so their bytes, and checksums, differ from the
ones tfds records for the download URLs; the test records the local files' checksums
in their place for the preparation. Everything else is tfds' own builder: its IDX
parsing, its PNG encoding and its hashed record order, which the loader undoes.

Needs TensorFlow (the builder reads its files with ``tf.io.gfile``) and the IDX files
(``apt-get install -y dataset-fashion-mnist``); CI runs it with ``pytest -m tensorflow``.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.core.download import checksums  # noqa: E402

from meta_semi_jax import data as data_lib  # noqa: E402
from meta_semi_jax.data import fashion_mnist  # noqa: E402
from tests.test_fashion_mnist import fashion_config  # noqa: E402

pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.skipif(not fashion_mnist.has_idx_files(fashion_mnist.DEFAULT_DIR),
                       reason=f"Fashion-MNIST's IDX files are not in "
                              f"{fashion_mnist.DEFAULT_DIR} ({fashion_mnist.INSTALL_COMMAND})"),
]
IDX_DIR = pathlib.Path(fashion_mnist.DEFAULT_DIR)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """tfds' fashion_mnist prepared as array_record from the local IDX files."""
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("fashion_mnist", data_dir=str(data_dir), file_format="array_record")
    recorded = type(builder).url_infos  # the builder class's memoised {url: UrlInfo}
    original = dict(recorded)
    recorded.update({url: checksums.compute_url_info(IDX_DIR / info.filename)
                     for url, info in original.items()})
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(IDX_DIR)))
    finally:
        recorded.clear()
        recorded.update(original)
    return data_dir


def test_tfds_and_the_idx_files_give_the_same_arrays(tfds_dir):
    from_idx = data_lib.load_raw(fashion_config(""))  # '' reads Debian's folder
    from_tfds = data_lib.load_raw(fashion_config(tfds_dir))  # no IDX files there
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(from_tfds, field), getattr(from_idx, field),
                                      err_msg=field)
    assert from_tfds.num_classes == from_idx.num_classes == 10
