"""Reader for the IDX format of (Fashion-)MNIST, with validation.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in
row-major order. Fashion-MNIST ships images as magic 2051 (ubyte, 3 dims) and labels as
magic 2049 (ubyte, 1 dim), each gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # 2051: ubyte, 3 dims (N, rows, cols)
LABELS_MAGIC = 0x00000801  # 2049: ubyte, 1 dim (N,)


class IDXError(ValueError):
    """An IDX file is missing, truncated or not what it claims to be."""


def _read_bytes(path: str | os.PathLike) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IDXError(f"IDX file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":  # not gzip: accept an uncompressed IDX file as well
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IDXError(
            f"IDX file {path} is a corrupt or truncated gzip stream ({type(e).__name__}: {e}); "
            "re-download or reinstall it (e.g. `apt-get install --reinstall dataset-fashion-mnist`)"
        ) from e


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array, validating its header.

    Raises IDXError naming the file when the magic number, the dtype or the byte count
    does not match the header.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"IDX file {path} is too short ({len(data)} bytes) to hold a header")
    (magic,) = struct.unpack(">I", data[:4])
    zero, dtype, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype != IDX_UBYTE or ndim == 0:
        raise IDXError(
            f"IDX file {path} has an unsupported header (magic 0x{magic:08x}): expected "
            "unsigned-byte data (0x08) with at least one dimension"
        )
    if expected_magic is not None and magic != expected_magic:
        raise IDXError(
            f"IDX file {path} has magic number {magic} (0x{magic:08x}); expected "
            f"{expected_magic} (0x{expected_magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"IDX file {path} is truncated inside its header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise IDXError(
            f"IDX file {path} is {what}: header shape {tuple(shape)} needs {expected} bytes "
            f"of data, found {got}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_images(path: str | os.PathLike) -> np.ndarray:
    """(N, rows, cols) uint8 images from an IDX3 file."""
    return read_idx(path, IMAGES_MAGIC)


def read_labels(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """(N,) int64 labels from an IDX1 file, optionally checked to lie in [0, num_classes)."""
    labels = read_idx(path, LABELS_MAGIC).astype(np.int64)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise IDXError(
            f"IDX file {path} holds label {int(labels.max())}; expected labels in "
            f"[0, {num_classes})"
        )
    return labels


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file (used by tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, IDX_UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
