"""load_dataset, the data root, and `cnnlab data info` on generated and on real data."""

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import dataset_splits, load_dataset, resolve_root
from cnnlab.errors import DataError, MissingDataError

REAL_DATA = os.environ.get("CNNLAB_DATA")
needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available"
)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_mnist(root: Path, train: int = 30, test: int = 10, labels_off_by: int = 0):
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        labels = np.arange(count + labels_off_by) % 10
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_named_dataset_from_root(tmp_path):
    fake_fashion_mnist(tmp_path)
    train = load_dataset("fashion-mnist", "train", root=tmp_path, download=False)
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype.is_floating_point is False
    assert train.labels.tolist() == [i % 10 for i in range(30)]
    assert train.classes[0] == "T-shirt/top" and train.name == "fashion-mnist/train"
    assert len(load_dataset("fashion-mnist", "test", root=tmp_path, download=False)) == 10


def test_image_and_label_counts_must_agree(tmp_path):
    folder = fake_fashion_mnist(tmp_path, labels_off_by=2)
    with pytest.raises(DataError, match=r"30 images but .*32 labels") as error:
        load_dataset("fashion-mnist", "train", root=tmp_path, download=False)
    assert str(folder) in str(error.value)


def test_unknown_split_and_dataset(tmp_path):
    with pytest.raises(DataError, match="its splits are: train, test"):
        load_dataset("fashion-mnist", "validation", root=tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset 'fashion_mnist'.*fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_missing_files_offline(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_dataset("mnist", "train", root=tmp_path, download=False)
    assert str(tmp_path / "mnist") in str(error.value)
    assert "train-images-idx3-ubyte.gz" in str(error.value)


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv("CNNLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_root() == tmp_path / "cache" / "cnnlab" / "data"


def test_data_info_cli_text_json_and_grid(tmp_path, capsys):
    fake_fashion_mnist(tmp_path)
    grid = tmp_path / "grid.png"
    argv = ["data", "info", "fashion-mnist", "--data-dir", str(tmp_path), "--no-download"]
    assert main([*argv, "--grid", str(grid), "--per-class", "3"]) == 0
    out = capsys.readouterr().out
    assert "30 images of 1x28x28" in out and "Ankle boot" in out
    assert f"grid of samples of fashion-mnist/train written to {grid}" in out
    with Image.open(grid) as image:
        assert image.format == "PNG"
        assert image.size[1] == 10 * (28 * 2 + 2) and image.size[0] > 3 * 56
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert main([*argv, "--json"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["images"] == 30 and train["per_class"]["Trouser"] == 3
    assert 0.45 < train["mean"][0] < 0.55  # uniform random pixels


def test_data_info_reports_every_split_unless_one_is_named(tmp_path, capsys):
    fake_fashion_mnist(tmp_path)
    argv = ["data", "info", "fashion-mnist", "--data-dir", str(tmp_path), "--no-download"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("fashion-mnist: 40 images in 2 splits (train 30, test 10)\n")
    assert "fashion-mnist/train: 30 images" in out and "fashion-mnist/test: 10 images" in out
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "fashion-mnist" and report["images"] == 40
    assert {split: info["images"] for split, info in report["splits"].items()} == {
        "train": 30,
        "test": 10,
    }
    assert main([*argv, "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["splits"]) == ["test"] and report["images"] == 10
    assert report["splits"]["test"]["name"] == "fashion-mnist/test"


def pet_folder(root: Path, splits: tuple[str, ...]) -> Path:
    """Two classes of 8x8 PNGs in each split folder (or flat when `splits` is empty), with as
    many images per class as the split's position in `splits` plus one."""
    for count, split in enumerate(splits or ("",), start=1):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), 40 * label + i, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_data_info_on_an_image_folder_reports_its_split_folders(tmp_path, capsys):
    pets = pet_folder(tmp_path / "pets", ("test", "train"))
    assert main(["data", "info", str(pets), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(split, info["images"]) for split, info in report["splits"].items()] == [
        ("train", 4),
        ("test", 2),
    ]
    assert report["images"] == 6 and report["splits"]["train"]["name"] == "pets/train"
    assert main(["data", "info", str(pets), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "split folders ['test', 'train']" in err and "found split='val'" in err


def test_data_info_on_a_flat_folder_reports_it_as_one_split(tmp_path, capsys):
    pets = pet_folder(tmp_path / "pets", ())
    assert main(["data", "info", str(pets), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["splits"]) == ["all"] and report["splits"]["all"]["name"] == "pets"


def test_dataset_splits_train_first(tmp_path):
    assert dataset_splits("cifar10") == ["train", "test"]
    assert dataset_splits(pet_folder(tmp_path / "a", ("val", "test", "train"))) == [
        "train",
        "val",
        "test",
    ]
    assert dataset_splits(pet_folder(tmp_path / "b", ())) == ["all"]
    with pytest.raises(DataError, match=r"unknown dataset .*no folder .*nowhere exists"):
        dataset_splits(tmp_path / "nowhere")


def test_data_info_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "info", "mnist", "--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "mnist" in err


@needs_real_data
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train", download=False)
    test = load_dataset("fashion-mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    mean, std = train.mean_std()
    assert abs(mean.item() - 0.2860) < 0.001 and abs(std.item() - 0.3530) < 0.001


@needs_real_data
def test_real_data_info_reports_train_and_test(capsys):
    assert main(["data", "info", "fashion-mnist", "--no-download", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    splits = report["splits"]
    assert [(split, info["images"]) for split, info in splits.items()] == [
        ("train", 60_000),
        ("test", 10_000),
    ]
    assert splits["test"]["per_class"]["Ankle boot"] == 1000 and report["images"] == 70_000


@needs_real_data
def test_real_data_info_grid(tmp_path, capsys):
    grid = tmp_path / "fashion.png"
    assert main(["data", "info", "fashion-mnist", "--split", "test", "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "10,000 images" in out and "Ankle boot" in out
    assert grid.stat().st_size > 1000


def test_cifar10_through_load_dataset(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (4, 3073), dtype=np.uint8)
        records[:, 0] = np.arange(4)
        (folder / name).write_bytes(records.tobytes())
    train = load_dataset("cifar10", root=tmp_path, download=False)
    assert train.images.shape == (20, 3, 32, 32) and train.classes[1] == "automobile"
    assert train.labels.tolist() == [0, 1, 2, 3] * 5


def test_image_folder_through_load_dataset(tmp_path, capsys):
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = np.full((8, 8, 3), 40 * label + i, dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "pets" / split / name / f"{i}.png")
    train = load_dataset(tmp_path / "pets")
    assert train.images.shape == (4, 3, 8, 8) and train.classes == ["cat", "dog"]
    assert len(load_dataset(tmp_path / "pets", "val")) == 4
    assert main(["data", "info", str(tmp_path / "pets"), "--split", "val"]) == 0
    assert "4 images of 3x8x8" in capsys.readouterr().out


def test_a_flat_folder_has_a_fixed_test_split_that_other_files_do_not_move(tmp_path):
    root = tmp_path / "shapes"

    def add(name: str, index: int, label: int) -> None:
        (root / name).mkdir(parents=True, exist_ok=True)
        pixels = np.full((8, 8), (7 * index + label) % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(root / name / f"{index:03d}.png")

    for label, name in enumerate(("circle", "square", "star")):
        for i in range(40 * (label + 1)):  # 40, 80 and 120 images
            add(name, i, label)
    whole = load_dataset(root)
    train, test = load_dataset(root, "train"), load_dataset(root, "test")
    assert (train.name, test.name) == ("shapes/train", "shapes/test")
    shares = test.class_counts() / whole.class_counts()
    assert all(0.08 < share < 0.35 for share in shares.tolist()), shares  # about 20% each
    seen = sorted(map(bytes, [*train.images.numpy(), *test.images.numpy()]))
    assert seen == sorted(map(bytes, whole.images.numpy()))  # disjoint, and all of them
    before = set(map(bytes, test.images.numpy()))
    for i in range(200, 230):  # new files: every old test image stays in the test split
        add("star", i, 2)
    after = set(map(bytes, load_dataset(root, "test").images.numpy()))
    assert before <= after
    assert dataset_splits(root) == ["all"]  # the folder itself is one split


def test_a_tiny_class_keeps_an_image_on_each_side():
    from cnnlab.data.splits import name_split

    kept, held = name_split(["a/1.png", "a/2.png", "b/1.png"], [0, 0, 1], 0.2)
    assert sorted([*kept.tolist(), *held.tolist()]) == [0, 1, 2]
    assert len(set(held.tolist()) & {0, 1}) == 1 and 2 in kept.tolist()
