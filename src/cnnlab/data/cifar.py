"""Strict readers of the binary CIFAR-10 and CIFAR-100 distributions.

Format (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009; "binary
version" at https://www.cs.toronto.edu/~kriz/cifar.html): a file is a run of fixed-size records
and nothing else. A CIFAR-10 record is 1 label byte (0-9) then 3072 pixel bytes: the 1024 red
values of the 32 x 32 image in row-major order, then the 1024 green, then the 1024 blue -- which
is already the C x H x W layout. A CIFAR-100 record has 2 label bytes, the coarse label (0-19)
then the fine label (0-99), before the same 3072 bytes. CIFAR-10 ships data_batch_1.bin ...
data_batch_5.bin and test_batch.bin in cifar-10-batches-bin/; CIFAR-100 ships train.bin and
test.bin in cifar-100-binary/, with the class names one per line in coarse_label_names.txt and
fine_label_names.txt.

Only the binary versions are read: the "python versions" are pickles, and unpickling a
downloaded file can run arbitrary code. Every defect raises one error naming the file, what was
expected and what was found: a missing or empty file, a size that is not a whole number of
records, a label outside its range, a class-name file with the wrong number of names; a file
above `MAX_FILE_BYTES`, or too large for the memory left, is refused before it is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError, DataFormatError, MissingDataError

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
CIFAR10_LABELS = (("label", 10),)  # (name, number of classes) of each label byte of a record
CIFAR100_LABELS = (("coarse label", 20), ("fine label", 100))
CIFAR100_COLUMNS = {"coarse": 0, "fine": 1}  # label kind -> its byte in a CIFAR-100 record
# 14x the largest official file (CIFAR-100's train.bin, 154 MB): a larger file is not CIFAR, and
# refusing it keeps a huge (or sparse) file from being read into memory.
MAX_FILE_BYTES = 2**31


def read_cifar10(
    folder: str | os.PathLike, files: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 binary batches (e.g. data_batch_1.bin ... data_batch_5.bin) from `folder`,
    in the order given: uint8 images N x 3 x 32 x 32 and int64 labels in [0, 10)."""
    images, labels = _read_records(Path(folder), files, CIFAR10_LABELS)
    return images, labels[:, 0]


def read_cifar100(
    folder: str | os.PathLike, files: Sequence[str], label: str = "fine"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read CIFAR-100 binary files (train.bin, test.bin) from `folder`: uint8 images
    N x 3 x 32 x 32, int64 labels and the class names, both fine (100 classes) or coarse (20
    superclasses) as `label` says. Both label bytes of every record are checked either way."""
    if label not in CIFAR100_COLUMNS:
        raise ValueError(f"label must be 'fine' or 'coarse', not {label!r}")
    column = CIFAR100_COLUMNS[label]
    folder = Path(folder)
    classes = _read_names(folder / f"{label}_label_names.txt", CIFAR100_LABELS[column][1])
    images, labels = _read_records(folder, files, CIFAR100_LABELS)
    return images, labels[:, column], classes


def _read_records(
    folder: Path, files: Sequence[str], label_fields: tuple[tuple[str, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All records of `files` in one array (sizes are checked first, so it is allocated once and
    never larger than the files), then images and labels split off it."""
    record_bytes = len(label_fields) + IMAGE_BYTES
    paths = [folder / name for name in files]
    counts = [_record_count(path, record_bytes) for path in paths]
    try:
        records = np.empty((sum(counts), record_bytes), dtype=np.uint8)
        start = 0
        for path, count in zip(paths, counts, strict=True):
            block = records[start : start + count]
            _read_into(path, block)
            _check_labels(path, block[:, : len(label_fields)], label_fields)
            start += count
        images = np.ascontiguousarray(records[:, len(label_fields) :]).reshape(-1, *IMAGE_SHAPE)
        labels = records[:, : len(label_fields)].astype(np.int64)
    except MemoryError:
        raise DataError(
            f"{folder}: not enough memory to read {sum(counts)} records of {record_bytes} bytes "
            f"from {', '.join(files)}"
        ) from None
    return torch.from_numpy(images), torch.from_numpy(labels)


def _record_count(path: Path, record_bytes: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingDataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise DataFormatError(f"{path}: empty file; expected records of {record_bytes} bytes")
    if size > MAX_FILE_BYTES:
        raise DataFormatError(
            f"{path}: {size} bytes, above the limit of {MAX_FILE_BYTES} bytes for one CIFAR file "
            "(the largest official one, train.bin, has 154 MB); it is not a CIFAR file"
        )
    whole, remainder = divmod(size, record_bytes)
    if remainder:
        raise DataFormatError(
            f"{path}: size {size} bytes is not a whole number of {record_bytes}-byte records "
            f"({whole} records and {remainder} bytes left over)"
        )
    return whole


def _read_into(path: Path, block: np.ndarray) -> None:
    try:
        with path.open("rb") as file:
            found = file.readinto(block)
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if found != block.nbytes:  # the file changed since its size was checked
        raise DataFormatError(f"{path}: expected {block.nbytes} bytes, read {found}")


def _check_labels(
    path: Path, labels: np.ndarray, label_fields: tuple[tuple[str, int], ...]
) -> None:
    for column, (name, num_classes) in enumerate(label_fields):
        outside = labels[:, column] >= num_classes  # unsigned, so never below 0
        if outside.any():
            record = int(outside.argmax())
            raise DataFormatError(
                f"{path}: record {record} has {name} {labels[record, column]}, outside "
                f"[0, {num_classes}) ({int(outside.sum())} of {len(labels)} records out of range)"
            )


def _read_names(path: Path, expected: int) -> list[str]:
    """Class names, one per line; blank lines at the end (the official files have them) are
    ignored, a blank line among the names is not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingDataError(f"{path}: file not found") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: expected UTF-8 text ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    names = [line.strip() for line in text.rstrip().splitlines()]
    if len(names) != expected or not all(names):
        found = f"{len(names)} lines" + (", some blank" if not all(names) else "")
        raise DataFormatError(
            f"{path}: expected {expected} class names, one per line; found {found}"
        )
    return names
