"""Every crash the reader fuzz (test_fuzz_*.py) found, pinned as a named test; the
huge-file cases the fuzz cannot reach (its files are a few kB): sparse files of gigabytes;
Pillow's pixel limit as it stands; and the command line on hostile data, in a real process.

Each regression test says what used to happen. The reads run under `memory_cap`, so a reader
that still allocated what a file declares would fail here with a MemoryError instead of a
CnnlabError.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_inputs import memory_cap
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.data.cifar import read_cifar10
from cnnlab.data.folder import ImageFolderStream, load_image_folder
from cnnlab.data.idx import read_idx, read_idx_images
from cnnlab.errors import CheckpointError, DataError, DataFormatError
from cnnlab.models import create_model
from cnnlab.runs.weights import load_model, save_weights

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_HEADROOM = 128 * 2**20  # far below what the files declare


def image_folder(root: Path, name: str, data: bytes) -> Path:
    (root / "cls").mkdir(parents=True)
    (root / "cls" / name).write_bytes(data)
    return root


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def skip_without_cap(memory) -> None:
    if memory.cap is None:  # without the cap the machine's memory decides: nothing to test
        pytest.skip("the address space cannot be capped here (Linux only)")


GRAY = Image.fromarray((np.arange(20).reshape(4, 5) * 12).astype(np.uint8))  # 5 wide, 4 high


# ---- IDX --------------------------------------------------------------------------------------


def test_idx_with_more_dimensions_than_an_array_can_have_is_refused(tmp_path):
    """Fuzz find: 65 dimensions of size 1 and one data byte made numpy's reshape raise a bare
    ValueError ("maximum supported dimension for an ndarray is 64")."""
    path = tmp_path / "deep.idx"
    path.write_bytes(bytes([0, 0, 0x08, 65]) + struct.pack(">65I", *[1] * 65) + b"\x07")
    with pytest.raises(DataFormatError, match=r"deep\.idx: declares 65 dimensions; .* at most 32"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 32]) + struct.pack(">32I", *[1] * 32) + b"\x07")
    assert read_idx(path).shape == (1,) * 32


def test_idx_file_too_large_for_the_memory_left_is_a_data_error(tmp_path):
    """A sparse 1.5 GB raw IDX file whose header fits its size (and the 2 GiB cap) used to end in
    a bare MemoryError when memory ran out; now a DataError naming the file."""
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as file:
        file.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1_900_000, 28, 28))
        file.truncate(16 + 1_900_000 * 28 * 28)  # sparse: no disk used
    with memory_cap(SMALL_HEADROOM) as memory, pytest.raises(DataError, match="not enough memory"):
        skip_without_cap(memory)
        read_idx_images(path)


# ---- CIFAR ------------------------------------------------------------------------------------


def test_cifar_file_above_the_size_limit_is_refused_unread(tmp_path):
    """A sparse 3 GiB file of whole records: np.empty asked for 3 GiB and the read went through
    it all; now it is refused from its size."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    with open(folder / "test_batch.bin", "wb") as file:
        file.truncate(3073 * 1_000_000)
    started = time.monotonic()
    with memory_cap(SMALL_HEADROOM), pytest.raises(DataFormatError, match=r"above the limit"):
        read_cifar10(folder, ["test_batch.bin"])
    assert time.monotonic() - started < 5


def test_cifar_file_too_large_for_the_memory_left_is_a_data_error(tmp_path):
    """Below the limit (1 GB of records) but above the memory left: was a bare MemoryError."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    with open(folder / "test_batch.bin", "wb") as file:
        file.truncate(3073 * 330_000)
    with memory_cap(SMALL_HEADROOM) as memory, pytest.raises(DataError, match="not enough memory"):
        skip_without_cap(memory)
        read_cifar10(folder, ["test_batch.bin"])


# ---- image folders ----------------------------------------------------------------------------


def test_png_declaring_14_million_rows_in_73_bytes_is_refused_before_decoding(tmp_path):
    """Fuzz find (the file is the one Hypothesis made): a 1-bit 5 x 14,090,244 PNG, under
    Pillow's pixel limit, whose zlib stream ends after a few rows. Pillow allocated the whole
    image, padded it with zeros and returned it (280 MB in RGB; a MemoryError under the fuzz's
    memory cap). Now: refused, naming the missing bytes, before anything is allocated."""
    root = tmp_path / "bomb"
    (root / "cls").mkdir(parents=True)
    shutil.copy(FIXTURES / "png_14m_rows_in_73_bytes.png", root / "cls" / "x.png")
    expected = r"x\.png: .*truncated pixel data: its 5x14090244 header needs 28180488 bytes"
    with memory_cap(SMALL_HEADROOM):
        with pytest.raises(DataFormatError, match=expected):
            load_image_folder(root)
        stream = ImageFolderStream(root)  # the header alone is fine
        with pytest.raises(DataFormatError, match=expected):
            stream[0]


def with_png_height(png: bytes, height: int) -> bytes:
    ihdr = png[12:20] + struct.pack(">I", height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_png_whose_header_claims_more_rows_than_its_data_is_refused_not_zero_padded(tmp_path):
    """Fuzz find: IHDR height 4 -> 100 with a valid checksum decoded "successfully", rows 4-99
    zeros (a silently wrong image)."""
    root = image_folder(tmp_path / "d", "tall.png", with_png_height(encoded(GRAY, "PNG"), 100))
    with pytest.raises(DataFormatError, match=r"tall\.png: .*needs 600 bytes .* hold 24"):
        load_image_folder(root)


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_jpeg_whose_header_claims_far_more_rows_than_its_data_is_refused(tmp_path, progressive):
    """Fuzz find: SOF height 4 -> 1000 decoded "successfully", every row after the first
    MCU mid-gray; and a 9000 x 9000 claim in 1 kB made Pillow allocate 324 MB first."""
    jpeg = bytearray(encoded(GRAY.convert("RGB"), "JPEG", progressive=progressive))
    frame = jpeg.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    for height, width in ((1000, 5), (9000, 9000)):
        jpeg[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
        root = image_folder(tmp_path / f"{height}", "tall.jpg", bytes(jpeg))
        expected = r"tall\.jpg: .*truncated pixel data: a scan"
        with memory_cap(SMALL_HEADROOM), pytest.raises(DataFormatError, match=expected):
            load_image_folder(root)


# ---- weights files: the model description ----------------------------------------------------


FASTNET = {"widths": [2, 2, 2], "stem_width": 2, "depth": 1}


def weights_describing(tmp_path: Path, **change) -> Path:
    """The weights of a tiny fastnet (26 tensors, 1 kB) with its description edited."""
    path = tmp_path / "model.safetensors"
    torch.manual_seed(0)
    model = create_model("fastnet", num_classes=2, in_channels=1, **FASTNET)
    description = {"model": "fastnet", "num_classes": 2, "in_channels": 1, "options": FASTNET}
    save_weights(path, model, {**description, **change})
    return path


WRONG_TYPES = {
    "model=[]": ({"model": []}, "TypeError: unhashable type: 'list'"),
    "model=null": ({"model": None}, "TypeError: 'NoneType' object is not iterable"),
    "num_classes=true": ({"num_classes": True}, "TypeError from torch.empty"),
    "widths=null": ({"options": {**FASTNET, "widths": None}}, "TypeError"),
    "widths='abc'": ({"options": {**FASTNET, "widths": "abc"}}, "TypeError"),
    "widths=[-1,2,2]": ({"options": {**FASTNET, "widths": [-1, 2, 2]}}, "RuntimeError"),
    "depth=-1": ({"options": {**FASTNET, "depth": -1}}, "ValueError"),
    "depth=1.5": ({"options": {**FASTNET, "depth": 1.5}}, "TypeError"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_a_weights_description_of_the_wrong_type_is_a_checkpoint_error(tmp_path, case):
    """Fuzz finds: a model description from the file went straight into create_model and the
    builder, and each of these escaped as the bare exception named in WRONG_TYPES."""
    path = weights_describing(tmp_path, **WRONG_TYPES[case][0])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(path)


HUGE = {
    "num_classes=10**9": {"num_classes": 10**9},  # a 336 GB classifier: torch's alloc failed
    "num_classes=2**40": {"num_classes": 2**40},
    "vgg19": {"model": "vgg19", "num_classes": 1000, "in_channels": 3, "options": {}},  # 548 MB
    "widths=2**16": {"options": {**FASTNET, "widths": [2**16, 2**16, 2]}},  # a 155 GB convolution
    "depth=10**5": {"options": {**FASTNET, "depth": 10**5}},  # 45 s of building, then MemoryError
}


@pytest.mark.parametrize("case", list(HUGE))
def test_a_weights_description_of_a_huge_model_is_refused_at_once_without_allocating(
    tmp_path, case
):
    """Fuzz finds: a 1 kB weights file could make load_model build whatever it described
    before comparing it with the weights in the file. Now the model is built on the meta device
    first, stopped past the file's tensor count, and checked against the file's shapes."""
    path = weights_describing(tmp_path, **HUGE[case])
    started = time.monotonic()
    with memory_cap(SMALL_HEADROOM), pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(path)
    assert time.monotonic() - started < 5


def test_the_description_checks_keep_good_weights_loading(tmp_path):
    model, description = load_model(weights_describing(tmp_path))
    assert description["options"] == FASTNET and not model.training


def test_huge_sparse_files_under_the_dataset_names_are_refused(tmp_path):
    """The files cnnlab finds under a dataset's names are as untrusted as any: 3 GiB sparse
    CIFAR test batch through load_dataset."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        with open(folder / name, "wb") as file:
            file.truncate(3073 * (1_000_000 if name == "test_batch.bin" else 1))
    with memory_cap(SMALL_HEADROOM), pytest.raises(DataFormatError, match=r"test_batch\.bin"):
        load_dataset("cifar10", "test", tmp_path, download=False, progress=False)
    assert os.path.getsize(folder / "test_batch.bin") == 3073 * 1_000_000


# ---- Pillow's own limit, and the command line in a real process -------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 9_000)])
def test_headers_over_pillows_pixel_limit_are_refused_as_decompression_bombs(
    tmp_path, fmt, width, height
):
    """Pillow's default limit (Image.MAX_IMAGE_PIXELS, 89.5 million pixels) applies as it
    stands: above twice it Pillow raises, between once and twice it only warns -- both are a
    DataFormatError saying "decompression bomb", before any pixel is allocated."""
    data = encoded(GRAY, fmt)
    if fmt == "PNG":
        ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
        data = (
            data[:8]
            + struct.pack(">I", 13)
            + ihdr
            + struct.pack(">I", zlib.crc32(ihdr))
            + data[33:]
        )
    else:
        frame = data.find(b"\xff\xc0")
        data = (
            data[: frame + 5]
            + struct.pack(">HH", min(height, 65535), min(width, 65535))
            + data[frame + 9 :]
        )
    root = image_folder(tmp_path / "bomb", f"x.{fmt.lower()}", data)
    with memory_cap(SMALL_HEADROOM), pytest.raises(DataFormatError, match="decompression bomb"):
        load_image_folder(root)


def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, int]:
    """`cnnlab` in a real process: exit code, stderr, and that process's own peak resident
    memory in bytes (from wait4, so other children of the test run do not count)."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "cnnlab", *args], stdout=subprocess.DEVNULL, stderr=stderr
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"cnnlab {' '.join(args)} ran for more than {timeout} s")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped: tell Popen
        stderr.seek(0)
        return process.returncode, stderr.read().decode(), usage.ru_maxrss * 1024


def test_the_command_line_refuses_hostile_data_in_one_line_with_bounded_memory(tmp_path):
    """`cnnlab data info` on each hostile input that used to cost hundreds of megabytes (or a
    traceback): exit code 2, one line naming the file, and a peak memory within 64 MiB of
    reading a good dataset of the same kind."""
    good = image_folder(tmp_path / "good", "x.png", encoded(GRAY, "PNG"))
    code, stderr, baseline = run_cli("data", "info", str(good))
    assert code == 0, stderr
    jpeg = bytearray(encoded(GRAY.convert("RGB"), "JPEG"))
    frame = jpeg.find(b"\xff\xc0")
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", 9000, 9000)
    shutil.copy(FIXTURES / "png_14m_rows_in_73_bytes.png", tmp_path / "x.png")
    cifar = tmp_path / "cifar" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
        with open(cifar / name, "wb") as file:
            file.truncate(3073 * (1_000_000 if name == "data_batch_3.bin" else 1))
    hostile = {
        "x.png": [str(image_folder(tmp_path / "png", "x.png", (tmp_path / "x.png").read_bytes()))],
        "x.jpg": [str(image_folder(tmp_path / "jpeg", "x.jpg", bytes(jpeg)))],
        "data_batch_3.bin": ["cifar10", "--data-dir", str(tmp_path / "cifar"), "--no-download"],
    }
    for name, args in hostile.items():
        code, stderr, peak = run_cli("data", "info", *args)
        assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert stderr.startswith("cnnlab data: error: ") and name in stderr, stderr
        assert peak < baseline + 64 * 2**20, (name, peak, baseline)
