"""The CIFAR binary readers: record layout, files concatenated in order, class names, and every
kind of broken file refused with a message naming the file and the facts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data.cifar import read_cifar10, read_cifar100
from cnnlab.errors import DataFormatError, MissingDataError

PIXELS = 3 * 32 * 32


def pixels(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)


def records(labels: list[tuple[int, ...]], images: np.ndarray) -> bytes:
    """Records written from the format's definition: label byte(s), then R, G, B planes."""
    return b"".join(
        bytes(label) + image.tobytes() for label, image in zip(labels, images, strict=True)
    )


def write_cifar10(folder: Path, name: str, labels: list[int], seed: int = 0) -> np.ndarray:
    images = pixels(seed, len(labels))
    (folder / name).write_bytes(records([(label,) for label in labels], images))
    return images


def write_names(path: Path, count: int, suffix: str = "\n\n") -> list[str]:
    names = [f"class_{i}" for i in range(count)]
    path.write_text("\n".join(names) + suffix)
    return names


def test_cifar10_layout_and_order(tmp_path):
    first = write_cifar10(tmp_path, "data_batch_1.bin", [3, 0, 9], seed=1)
    second = write_cifar10(tmp_path, "data_batch_2.bin", [5, 5], seed=2)
    images, labels = read_cifar10(tmp_path, ["data_batch_1.bin", "data_batch_2.bin"])
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 32, 32)
    assert images.is_contiguous()
    assert labels.dtype == torch.int64 and labels.tolist() == [3, 0, 9, 5, 5]
    assert torch.equal(images, torch.from_numpy(np.concatenate([first, second])))


def test_cifar10_planes_are_red_green_blue(tmp_path):
    # one record by hand: red plane all 10, green all 20, blue counts 0..255 along each row
    blue = (np.arange(1024) % 256).astype(np.uint8).tobytes()
    (tmp_path / "test_batch.bin").write_bytes(bytes([7]) + b"\x0a" * 1024 + b"\x14" * 1024 + blue)
    images, labels = read_cifar10(tmp_path, ["test_batch.bin"])
    assert labels.tolist() == [7]
    assert (images[0, 0] == 10).all() and (images[0, 1] == 20).all()
    assert images[0, 2, 0, 31] == 31 and images[0, 2, 8, 0] == 0  # row 8 starts at byte 256


@pytest.mark.parametrize(("label", "expected_classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100(tmp_path, label, expected_classes):
    fine_names = write_names(tmp_path / "fine_label_names.txt", 100)
    coarse_names = write_names(tmp_path / "coarse_label_names.txt", 20, suffix="\n")
    pairs = [(19, 99), (0, 0), (4, 37)]  # (coarse, fine)
    images = pixels(3, len(pairs))
    (tmp_path / "train.bin").write_bytes(records(pairs, images))
    read_images, labels, classes = read_cifar100(tmp_path, ["train.bin"], label=label)
    assert torch.equal(read_images, torch.from_numpy(images))
    column = 1 if label == "fine" else 0
    assert labels.dtype == torch.int64
    assert labels.tolist() == [pair[column] for pair in pairs]
    assert classes == (fine_names if label == "fine" else coarse_names)
    assert len(classes) == expected_classes


def test_cifar100_unknown_label_kind(tmp_path):
    with pytest.raises(ValueError, match=r"'fine' or 'coarse', not 'super'"):
        read_cifar100(tmp_path, ["train.bin"], label="super")


def test_size_not_whole_records(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(2 * 3073 + 100))
    with pytest.raises(
        DataFormatError,
        match=r"data_batch_1.bin: size 6246 bytes is not a whole number of 3073-byte records "
        r"\(2 records and 100 bytes left over\)",
    ):
        read_cifar10(tmp_path, ["data_batch_1.bin"])


def test_cifar100_record_size(tmp_path):
    write_names(tmp_path / "fine_label_names.txt", 100)
    (tmp_path / "test.bin").write_bytes(bytes(3 * 3073))  # CIFAR-10-sized records
    with pytest.raises(DataFormatError, match=r"test.bin: size 9219 bytes .* 3074-byte records"):
        read_cifar100(tmp_path, ["test.bin"])


def test_empty_file(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(
        DataFormatError, match=r"test_batch.bin: empty file; expected records of 3073"
    ):
        read_cifar10(tmp_path, ["test_batch.bin"])


def test_cifar10_label_outside_range(tmp_path):
    write_cifar10(tmp_path, "data_batch_1.bin", [1, 2])
    write_cifar10(tmp_path, "data_batch_2.bin", [0, 10, 200])
    with pytest.raises(
        DataFormatError,
        match=r"data_batch_2.bin: record 1 has label 10, outside \[0, 10\) \(2 of 3 records",
    ):
        read_cifar10(tmp_path, ["data_batch_1.bin", "data_batch_2.bin"])


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ((20, 5), r"record 1 has coarse label 20, outside \[0, 20\)"),
        ((3, 100), r"record 1 has fine label 100, outside \[0, 100\)"),
    ],
)
def test_cifar100_label_outside_range(tmp_path, pair, message):
    write_names(tmp_path / "coarse_label_names.txt", 20)
    (tmp_path / "train.bin").write_bytes(records([(0, 0), pair], pixels(4, 2)))
    # both label bytes are checked, whichever kind is asked for
    with pytest.raises(DataFormatError, match=r"train.bin: " + message):
        read_cifar100(tmp_path, ["train.bin"], label="coarse")


def test_missing_files(tmp_path):
    with pytest.raises(MissingDataError, match=r"data_batch_3.bin: file not found"):
        read_cifar10(tmp_path, ["data_batch_3.bin"])
    with pytest.raises(MissingDataError, match=r"fine_label_names.txt: file not found"):
        read_cifar100(tmp_path, ["train.bin"])
    write_names(tmp_path / "fine_label_names.txt", 100)
    with pytest.raises(MissingDataError, match=r"train.bin: file not found"):
        read_cifar100(tmp_path, ["train.bin"])


def test_wrong_number_of_class_names(tmp_path):
    write_names(tmp_path / "fine_label_names.txt", 99)
    with pytest.raises(
        DataFormatError, match=r"fine_label_names.txt: expected 100 class names, .*found 99 lines"
    ):
        read_cifar100(tmp_path, ["train.bin"])


def test_blank_class_name_in_the_middle(tmp_path):
    names = write_names(tmp_path / "coarse_label_names.txt", 20)
    names[5] = " "
    (tmp_path / "coarse_label_names.txt").write_text("\n".join(names))
    with pytest.raises(
        DataFormatError, match=r"expected 20 class names.*found 20 lines, some blank"
    ):
        read_cifar100(tmp_path, ["train.bin"], label="coarse")


def test_checks_hold_under_python_O(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(3073 + 1))
    script = (
        "import sys\n"
        "from cnnlab.data.cifar import read_cifar10\n"
        "from cnnlab.errors import DataFormatError\n"
        "assert False, 'asserts must be off'\n"
        "try:\n"
        f"    read_cifar10({str(tmp_path)!r}, ['data_batch_1.bin'])\n"
        "except DataFormatError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    sys.exit('accepted a file of 1 record and 1 byte')\n"
    )
    done = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 records and 1 bytes left over" in done.stdout
