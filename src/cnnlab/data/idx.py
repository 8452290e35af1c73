"""Strict reader of the IDX files of MNIST, Fashion-MNIST and KMNIST.

The IDX format (LeCun, Cortes and Burges, http://yann.lecun.com/exdb/mnist/, "file formats"):
a 4-byte magic number -- two zero bytes, a data type code, the number of dimensions -- then one
big-endian uint32 size per dimension, then the values in row-major order, big-endian. Type codes:
0x08 unsigned byte, 0x09 signed byte, 0x0B short (2 bytes), 0x0C int (4), 0x0D float (4),
0x0E double (8). `read_idx` reads any of them; images (3 dimensions: count x rows x columns) and
labels (1 dimension) must be unsigned bytes, as in every dataset cnnlab knows.

Files may be gzip-compressed, as they are distributed, or raw: the gzip magic bytes (1f 8b)
decide, not the file name. Every defect raises one `DataFormatError` naming the file, what was
expected and what was found. The declared size is checked before anything of that size is
allocated: against a cap, and for raw files against the file size; gzip streams are decompressed
piece by piece, so memory follows the bytes actually there, not what a corrupt header claims.
A header declaring more dimensions than an array can have (32) is refused, and a file too large
for the memory left is a `DataError`, not a MemoryError. Image and label counts are compared by
`check_pair`.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from cnnlab.errors import DataError, DataFormatError, MissingDataError

GZIP_MAGIC = b"\x1f\x8b"
UNSIGNED_BYTE = 0x08
TYPES = {
    0x08: ("unsigned byte", np.dtype("u1")),
    0x09: ("signed byte", np.dtype("i1")),
    0x0B: ("short", np.dtype(">i2")),
    0x0C: ("int", np.dtype(">i4")),
    0x0D: ("float", np.dtype(">f4")),
    0x0E: ("double", np.dtype(">f8")),
}
# 45x the largest IDX file cnnlab reads (MNIST-style train images: 47 MB); a header declaring
# more is corrupt, and refusing it keeps a bad file from asking for gigabytes.
MAX_DATA_BYTES = 2**31
# numpy's limit (32 before numpy 2, 64 since): a header declaring more dimensions is refused.
MAX_DIMENSIONS = 32
# gzip streams are decompressed in pieces of this size, never into a buffer of the declared size.
CHUNK_BYTES = 1 << 24


def read_idx(
    path: str | os.PathLike, *, ndim: int | None = None, type_code: int | None = None
) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into an array of its declared shape (native byte
    order, writable). `ndim` and `type_code`, when given, are required of the header and checked
    before the data are read."""
    path = Path(path)
    with _open(path) as file:
        compressed = file.read(2) == GZIP_MAGIC
        file.seek(0)
        if not compressed:
            return _read_stream(file, path, ndim, type_code, os.fstat(file.fileno()).st_size)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_stream(stream, path, ndim, type_code, None)
        except (gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise DataFormatError(f"{path}: corrupt gzip stream ({error})") from None


def read_idx_images(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX image file (unsigned bytes, count x rows x columns) as uint8 N x 1 x H x W."""
    array = read_idx(path, ndim=3, type_code=UNSIGNED_BYTE)
    if 0 in array.shape:
        raise DataFormatError(
            f"{path}: declares shape {_shape_text(array.shape)}; expected at least one image "
            "of at least 1 x 1 pixels"
        )
    return torch.from_numpy(array).unsqueeze(1)


def read_idx_labels(path: str | os.PathLike, num_classes: int) -> torch.Tensor:
    """Read an IDX label file (unsigned bytes, one dimension) as int64 labels, each checked to
    lie in [0, num_classes)."""
    array = read_idx(path, ndim=1, type_code=UNSIGNED_BYTE)
    if len(array) == 0:
        raise DataFormatError(f"{path}: declares 0 labels; expected at least one")
    outside = array >= num_classes  # unsigned, so never below 0
    if outside.any():
        index = int(outside.argmax())
        raise DataFormatError(
            f"{path}: label {array[index]} at index {index} is outside [0, {num_classes}) "
            f"({int(outside.sum())} of {len(array)} labels out of range)"
        )
    with _memory_for(path, 8 * len(array)):
        return torch.from_numpy(array.astype(np.int64))


def check_pair(
    images: torch.Tensor,
    labels: torch.Tensor,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
) -> None:
    """Refuse an image file and a label file that do not hold one label per image."""
    if len(images) != len(labels):
        raise DataFormatError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            "labels; expected one label per image"
        )


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise MissingDataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def _read_stream(
    stream: BinaryIO, path: Path, ndim: int | None, type_code: int | None, file_bytes: int | None
) -> np.ndarray:
    """Header, size checks, then the data. `file_bytes` is the size of a raw file (None for a
    gzip stream, whose decompressed size is only known by reading it)."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise _short_header(path, len(magic), 4, "the 4-byte magic number")
    dtype = _check_magic(path, magic, ndim, type_code)
    if magic[3] > MAX_DIMENSIONS:
        raise DataFormatError(
            f"{path}: declares {magic[3]} dimensions; expected at most {MAX_DIMENSIONS} "
            "(the most an array can have)"
        )
    header_bytes = 4 + 4 * magic[3]
    dims = stream.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise _short_header(
            path,
            4 + len(dims),
            header_bytes,
            f"the magic number and 4 bytes for each of its {magic[3]} dimensions",
        )
    shape = struct.unpack(f">{magic[3]}I", dims)
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_DATA_BYTES:
        raise DataFormatError(
            f"{path}: declared shape {_shape_text(shape)} means {expected} bytes of data, above "
            f"the limit of {MAX_DATA_BYTES} bytes; the header is corrupt"
        )
    if file_bytes is not None and file_bytes - header_bytes != expected:
        raise _size_error(path, shape, expected, file_bytes - header_bytes)
    with _memory_for(path, expected):
        data = _read_data(stream, expected, compressed=file_bytes is None)
        found = len(data) + _count_rest(stream)
        if found != expected:
            raise _size_error(path, shape, expected, found)
        # The bytearray buffer makes the array, and tensors made from it, writable without a copy.
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        return array.astype(dtype.newbyteorder("="), copy=False)


@contextlib.contextmanager
def _memory_for(path: Path, data_bytes: int) -> Iterator[None]:
    """A file too large for the memory left is refused like any other unusable file."""
    try:
        yield
    except MemoryError:
        raise DataError(
            f"{path}: not enough memory to read its {data_bytes} bytes of data"
        ) from None


def _check_magic(path: Path, magic: bytes, ndim: int | None, type_code: int | None) -> np.dtype:
    if magic[:2] != b"\0\0":
        raise DataFormatError(
            f"{path}: not an IDX file: expected a magic number starting with two zero bytes, "
            f"found {magic.hex(' ')}"
        )
    code = magic[2]
    if code not in TYPES or (type_code is not None and code != type_code):
        wanted = [type_code] if type_code is not None else list(TYPES)
        expected = ", ".join(f"0x{c:02X} ({TYPES[c][0]})" for c in wanted)
        found = TYPES[code][0] if code in TYPES else "not an IDX type"
        raise DataFormatError(
            f"{path}: expected IDX data type {expected}, found 0x{code:02X} ({found})"
        )
    if ndim is not None and magic[3] != ndim:
        raise DataFormatError(
            f"{path}: expected {ndim} dimension{'s' * (ndim != 1)}, found {magic[3]}"
        )
    return TYPES[code][1]


def _read_data(stream: BinaryIO, expected: int, compressed: bool) -> bytearray:
    if not compressed:  # the size was checked against the file: one read of exactly that much
        data = bytearray(expected)
        del data[stream.readinto(data) :]
        return data
    data = bytearray()
    while len(data) < expected:
        piece = stream.read(min(CHUNK_BYTES, expected - len(data)))
        if not piece:
            break
        data += piece
    return data


def _count_rest(stream: BinaryIO) -> int:
    """Bytes left after the data (trailing garbage), counted without keeping them; stops past
    the cap so that a decompression bomb cannot keep it busy."""
    rest = 0
    while rest <= MAX_DATA_BYTES:
        piece = stream.read(CHUNK_BYTES)
        if not piece:
            break
        rest += len(piece)
    return rest


def _short_header(path: Path, found: int, expected: int, what: str) -> DataFormatError:
    return DataFormatError(
        f"{path}: header truncated: expected {expected} bytes ({what}), found {found}"
    )


def _size_error(path: Path, shape, expected: int, found: int) -> DataFormatError:
    problem = "truncated data" if found < expected else f"{found - expected} trailing bytes"
    return DataFormatError(
        f"{path}: {problem}: shape {_shape_text(shape)} needs {expected} data bytes "
        f"after the header, found {found}"
    )


def _shape_text(shape) -> str:
    return " x ".join(str(size) for size in shape)
