"""The IDX reader: valid files (raw and gzip) round-trip, every kind of broken file is refused
with a message naming the file and the facts, and the real Fashion-MNIST reads right."""

import gzip
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data.idx import (
    check_pair,
    read_idx,
    read_idx_images,
    read_idx_labels,
)
from cnnlab.errors import DataFormatError, MissingDataError


def idx_bytes(array: np.ndarray, type_code: int = 0x08, dims=None) -> bytes:
    """An IDX file written by hand from the format's definition (independent of the reader)."""
    dims = array.shape if dims is None else dims
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + big_endian.tobytes()


def write(path: Path, content: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def images(count=4, rows=3, cols=5) -> np.ndarray:
    return np.arange(count * rows * cols, dtype=np.uint8).reshape(count, rows, cols)


@pytest.mark.parametrize("compress", [False, True])
def test_images_round_trip(tmp_path, compress):
    path = write(tmp_path / "images", idx_bytes(images()), compress)
    result = read_idx_images(path)
    assert result.dtype == torch.uint8 and result.shape == (4, 1, 3, 5)
    assert torch.equal(result[:, 0], torch.from_numpy(images()))
    result[0, 0, 0, 0] = 99  # writable, no warning about a read-only buffer
    assert result[0, 0, 0, 0] == 99


@pytest.mark.parametrize("compress", [False, True])
def test_labels_round_trip(tmp_path, compress):
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    result = read_idx_labels(write(tmp_path / "labels", idx_bytes(labels), compress), 10)
    assert result.dtype == torch.int64
    assert result.tolist() == [0, 9, 3, 3, 7]


def test_gzip_is_detected_by_content_not_name(tmp_path):
    content = idx_bytes(images())
    raw_named_gz = write(tmp_path / "raw.gz", content)
    gzip_named_raw = write(tmp_path / "images-idx3-ubyte", content, compress=True)
    assert torch.equal(read_idx_images(raw_named_gz), read_idx_images(gzip_named_raw))


@pytest.mark.parametrize(
    ("type_code", "dtype"), [(0x09, "i1"), (0x0B, "i2"), (0x0C, "i4"), (0x0D, "f4"), (0x0E, "f8")]
)
def test_read_idx_other_types_big_endian(tmp_path, type_code, dtype):
    values = np.array([[-2, 1, 300 % 127], [5, -7, 100]], dtype=dtype)
    result = read_idx(write(tmp_path / "values", idx_bytes(values, type_code)))
    assert result.dtype == np.dtype(dtype) and result.shape == (2, 3)
    np.testing.assert_array_equal(result, values)


def test_wrong_magic(tmp_path):
    content = b"\x01\x02" + idx_bytes(images())[2:]
    path = write(tmp_path / "bad", content)
    with pytest.raises(DataFormatError, match=r"bad: not an IDX file.*two zero bytes.*01 02 08 03"):
        read_idx_images(path)


def test_wrong_type_code_for_images(tmp_path):
    path = write(tmp_path / "floats", idx_bytes(images().astype("f4"), 0x0D), compress=True)
    with pytest.raises(
        DataFormatError, match=r"floats.*0x08 \(unsigned byte\), found 0x0D \(float"
    ):
        read_idx_images(path)


def test_unknown_type_code(tmp_path):
    path = write(tmp_path / "odd", idx_bytes(images(), 0x07))
    with pytest.raises(DataFormatError, match=r"odd.*found 0x07 \(not an IDX type\)"):
        read_idx(path)


def test_wrong_number_of_dimensions(tmp_path):
    labels = write(tmp_path / "labels", idx_bytes(np.zeros(4, np.uint8)))
    pictures = write(tmp_path / "pictures", idx_bytes(images()))
    with pytest.raises(DataFormatError, match=r"labels: expected 3 dimensions, found 1"):
        read_idx_images(labels)
    with pytest.raises(DataFormatError, match=r"pictures: expected 1 dimension, found 3"):
        read_idx_labels(pictures, 10)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_data(tmp_path, compress):
    path = write(tmp_path / "short", idx_bytes(images())[:-7], compress)  # 60 data bytes - 7
    with pytest.raises(
        DataFormatError, match=r"short: truncated data: shape 4 x 3 x 5 needs 60 .*found 53"
    ):
        read_idx_images(path)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path, compress):
    path = write(tmp_path / "long", idx_bytes(images()) + b"\0" * 9, compress)
    with pytest.raises(DataFormatError, match=r"long: 9 trailing bytes: .* needs 60 .*found 69"):
        read_idx_images(path)


@pytest.mark.parametrize("compress", [False, True])
def test_header_shorter_than_declared(tmp_path, compress):
    # declares 3 dimensions (16-byte header) but stops after the first size
    path = write(tmp_path / "stub", bytes([0, 0, 8, 3]) + struct.pack(">I", 60000), compress)
    with pytest.raises(
        DataFormatError, match=r"stub: header truncated: expected 16 bytes .*found 8"
    ):
        read_idx_images(path)


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty", b"")
    with pytest.raises(
        DataFormatError, match=r"empty: header truncated: expected 4 bytes.*found 0"
    ):
        read_idx(path)


def test_size_above_cap_refused(tmp_path):
    content = idx_bytes(images(), dims=(2**32 - 1, 28, 28))
    with pytest.raises(DataFormatError, match=r"4294967295 x 28 x 28 means \d+ bytes.*2147483648"):
        read_idx_images(write(tmp_path / "huge", content, compress=True))


@pytest.mark.parametrize("compress", [False, True])
def test_absurd_size_refused_without_allocating(tmp_path, compress):
    # 1,000,000 x 28 x 28 = 784 MB declared (under the cap), 60 bytes present: refused, and the
    # reader's peak memory stays far below the declared size.
    content = idx_bytes(images(), dims=(1_000_000, 28, 28))
    path = write(tmp_path / "liar", content, compress)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=r"truncated data: .* needs 784000000 .*found 60"):
            read_idx_images(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000


def test_corrupt_gzip_stream(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(images(20, 28, 28))))
    packed[len(packed) // 2] ^= 0xFF
    with pytest.raises(DataFormatError, match=r"flipped: corrupt gzip stream"):
        read_idx_images(write(tmp_path / "flipped", bytes(packed)))
    cut = gzip.compress(idx_bytes(images()))[:-12]
    with pytest.raises(DataFormatError, match=r"cut: corrupt gzip stream"):
        read_idx_images(write(tmp_path / "cut", cut))


def test_label_outside_range(tmp_path):
    labels = np.array([0, 1, 2, 10, 4, 12], dtype=np.uint8)
    path = write(tmp_path / "labels", idx_bytes(labels))
    with pytest.raises(
        DataFormatError, match=r"labels: label 10 at index 3 is outside \[0, 10\) \(2 of 6"
    ):
        read_idx_labels(path, 10)
    assert read_idx_labels(path, 13).max() == 12


def test_no_images_or_labels(tmp_path):
    pictures = write(tmp_path / "none", idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    labels = write(tmp_path / "nolabels", idx_bytes(np.zeros(0, np.uint8)))
    with pytest.raises(
        DataFormatError, match=r"none: declares shape 0 x 28 x 28; expected at least"
    ):
        read_idx_images(pictures)
    with pytest.raises(DataFormatError, match=r"nolabels: declares 0 labels"):
        read_idx_labels(labels, 10)


def test_check_pair(tmp_path):
    pictures = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    check_pair(pictures, torch.zeros(5), "a", "b")
    with pytest.raises(DataFormatError, match=r"img holds 5 images but .*lab holds 4 labels"):
        check_pair(pictures, torch.zeros(4), tmp_path / "img", tmp_path / "lab")


def test_missing_file(tmp_path):
    with pytest.raises(MissingDataError, match=r"nowhere.gz: file not found"):
        read_idx_images(tmp_path / "nowhere.gz")


def test_checks_hold_under_python_O(tmp_path):
    path = write(tmp_path / "short", idx_bytes(images())[:-1], compress=True)
    script = (
        "import sys\n"
        "from cnnlab.data.idx import read_idx_images\n"
        "from cnnlab.errors import DataFormatError\n"
        "assert False, 'asserts must be off'\n"
        "try:\n"
        f"    read_idx_images({str(path)!r})\n"
        "except DataFormatError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    sys.exit('accepted a truncated file')\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "truncated data" in done.stdout and "found 59" in done.stdout


@pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="real-data test: set CNNLAB_DATA to a folder holding fashion-mnist/",
)
def test_real_fashion_mnist():
    folder = Path(os.environ["CNNLAB_DATA"]) / "fashion-mnist"
    for prefix, count in (("train", 60000), ("t10k", 10000)):
        pictures = read_idx_images(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx_labels(folder / f"{prefix}-labels-idx1-ubyte.gz", 10)
        check_pair(pictures, labels, prefix, prefix)
        assert pictures.shape == (count, 1, 28, 28) and pictures.dtype == torch.uint8
        assert torch.bincount(labels, minlength=10).tolist() == [count // 10] * 10
        if prefix == "train":
            mean = pictures.sum(dtype=torch.int64).item() / pictures.numel() / 255
            assert mean == pytest.approx(0.2860, abs=0.001)
