"""The IDX file format of MNIST and Fashion-MNIST (LeCun's ``*-idx3-ubyte``), plain or
gzipped.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order, big-endian.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from meta_semi_jax.data.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
# IDX type code -> NumPy dtype (big-endian where it matters).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_file_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it starts with gzip's magic number."""
    with open(path, "rb") as f:
        content = f.read()
    if content.startswith(GZIP_MAGIC):
        try:
            return gzip.decompress(content)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is a damaged gzip file: {e}") from None
    return content


def parse_idx(content: bytes, name: str) -> np.ndarray:
    """The array an IDX file's ``content`` holds, in native byte order; ``name`` names
    the file in errors."""
    expected = ("an IDX file starts with 0x00 0x00, a type code (0x08 uint8, 0x09 int8, "
                "0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and a dimension count")
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] not in IDX_TYPES:
        magic = f"0x{content[:4].hex()}" if content else "missing (the file is empty)"
        raise DataError(f"{name} is not an IDX file: its magic number is {magic}; {expected}")
    dtype, ndim = IDX_TYPES[content[2]], content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{name} is truncated: its header declares {ndim} dimensions but "
                        f"the file has {len(content)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", ndim, offset=4))
    data_size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(content) - header_size != data_size:
        state = "truncated" if len(content) - header_size < data_size else "too long"
        raise DataError(f"{name} is {state}: its header declares shape {shape} of "
                        f"{dtype.name} ({data_size} bytes of data) but the file holds "
                        f"{len(content) - header_size}")
    array = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped or not)."""
    if not os.path.isfile(path):
        raise DataError(f"no IDX file {path}")
    return parse_idx(read_file_bytes(path), path)
