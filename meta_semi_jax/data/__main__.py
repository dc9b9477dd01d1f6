"""Prepares a dataset once, where the network is reachable (e.g. a cluster's login node):

    python -m meta_semi_jax.data prepare cifar10 --data_dir=/data/tfds

Downloads the dataset and writes it as array_record, which training reads without
TensorFlow. Preparing encodes images with TensorFlow: ``pip install -e .[prepare]``.
For STL-10 it also saves the official fold definitions next to the data.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags

from meta_semi_jax.data import stl10_folds, tfds_data

_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data directory (default: tfds').")
USAGE = "usage: python -m meta_semi_jax.data prepare <dataset> [--data_dir=DIR]"


def prepare(dataset: str, data_dir: str) -> None:
    """Downloads and prepares ``dataset`` in ``data_dir`` as array_record."""
    import tensorflow_datasets as tfds

    source = tfds_data.tfds_source(dataset)
    builder = tfds.builder(source.name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    if dataset == "stl10":
        manager = tfds.download.DownloadManager(
            download_dir=os.path.join(data_dir, "downloads"))
        archive_dir = manager.download_and_extract(stl10_folds.ARCHIVE_URL)  # cached
        stl10_folds.save_fold_file(os.fspath(archive_dir), data_dir)
    print(f"prepared {dataset} in {builder.data_dir}")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 3 or argv[1] != "prepare":
        sys.exit(USAGE)
    dataset = argv[2]
    if not tfds_data.is_tfds_dataset(dataset):
        sys.exit(f"error: {dataset!r} is not a tfds dataset this program reads; choose one of "
                 f"{', '.join(tfds_data.TFDS_SOURCES)}, tfds:<name>")
    prepare(dataset, tfds_data.resolve_data_dir(_DATA_DIR.value))


if __name__ == "__main__":
    app.run(main)
