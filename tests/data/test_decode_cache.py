"""The decoded-image-folder cache: used when the folder is unchanged, rebuilt when it changed or
the cache file is damaged or foreign, never written inside the dataset folder; and the
parallel decode behind it, which must give exactly what a one-by-one decode gives."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cnnlab.data import folder_decode
from cnnlab.data.decode_cache import cache_root
from cnnlab.data.folder import load_image_folder_with_report
from cnnlab.errors import DataFormatError


def write_folder(root: Path, per_class: int = 6, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., 0] = 40 * label + index
            Image.fromarray(pixels).save(root / name / f"{index:03d}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(folder))
    return folder


def load(path, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, report = load_image_folder_with_report(path, **options)
    return data, report, [str(warning.message) for warning in caught]


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "images").glob("*.safetensors"))


def test_second_load_reads_the_cache_and_gives_the_same_tensors(tmp_path, cache):
    folder = write_folder(tmp_path / "pets")
    first, report, _ = load(folder)
    assert report.cache == "decoded" and len(cache_files(cache)) == 1
    second, report, _ = load(folder)
    assert report.cache == "read"
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == ["cat", "dog"] and second.name == first.name
    # nothing was written beside the images
    assert sorted(p.name for p in folder.iterdir()) == ["cat", "dog"]


def test_the_cache_folder_defaults_to_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "cnnlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "cnnlab"


@pytest.mark.parametrize("change", ["rewrite", "touch", "add", "remove"])
def test_any_change_to_the_folder_invalidates_the_cache(tmp_path, cache, change):
    folder = write_folder(tmp_path / "pets")
    load(folder)
    target = folder / "dog" / "002.png"
    if change == "rewrite":  # same name and size class, other pixels
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
    elif change == "touch":
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif change == "add":
        Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(folder / "cat" / "new.png")
    else:
        target.unlink()
    data, report, caught = load(folder)
    assert report.cache == "decoded" and not caught  # an expected miss: no warning
    fresh, _, _ = load(folder, cache=False)
    assert torch.equal(data.images, fresh.images) and torch.equal(data.labels, fresh.labels)
    assert len(cache_files(cache)) == 1  # the stale file was replaced, not kept beside


def damage_garbage(path: Path) -> None:
    path.write_bytes(b"not a safetensors file at all")


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_foreign(path: Path) -> None:
    save_file({"images": torch.zeros(12, 3, 8, 8, dtype=torch.uint8)}, path)


def damage_labels(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    tensors["labels"] = tensors["labels"].flip(0).contiguous()
    save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize("damage", [damage_garbage, damage_truncate, damage_foreign, damage_labels])
def test_a_damaged_or_foreign_cache_file_is_rebuilt_never_trusted(tmp_path, cache, damage):
    folder = write_folder(tmp_path / "pets")
    truth, _, _ = load(folder)
    (path,) = cache_files(cache)
    damage(path)
    data, report, caught = load(folder)
    assert report.cache == "decoded"
    assert len(caught) == 1 and str(path) in caught[0] and "decoded the folder again" in caught[0]
    assert torch.equal(data.images, truth.images) and torch.equal(data.labels, truth.labels)
    _, report, caught = load(folder)  # and the rebuilt file is good again
    assert report.cache == "read" and not caught


def test_an_unwritable_cache_folder_costs_only_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("CNNLAB_CACHE", str(blocker / "cache"))
    folder = write_folder(tmp_path / "pets")
    data, report, caught = load(folder)
    assert len(data) == 12 and report.cache == "decoded"
    assert len(caught) == 1 and caught[0].startswith("decoded images not cached")


def test_skipped_files_are_remembered_by_the_cache(tmp_path, cache):
    folder = write_folder(tmp_path / "pets")
    (folder / "cat" / "bad.png").write_bytes(b"GIF89a pretending")
    _, first, _ = load(folder, on_error="skip")
    _, second, _ = load(folder, on_error="skip")
    assert second.cache == "read" and second.skipped == first.skipped
    assert [path.name for path, _ in second.skipped] == ["bad.png"]
    with pytest.raises(DataFormatError, match=r"bad\.png"):  # another policy: its own entry
        load(folder, on_error="fail")


@pytest.fixture
def parallel(monkeypatch):
    """Decode in worker processes even for a tiny folder."""
    monkeypatch.setattr(folder_decode, "CHUNK", 4)
    monkeypatch.setattr(folder_decode, "PARALLEL_FROM", 1)
    monkeypatch.setattr(folder_decode, "_cores", lambda: 2)


def test_parallel_decode_gives_what_a_one_by_one_decode_gives(tmp_path, cache, parallel):
    folder = write_folder(tmp_path / "pets", per_class=9)
    (folder / "dog" / "004.png").write_bytes(b"")
    (folder / "cat" / "001.png").write_bytes(b"hello")
    data, report, _ = load(folder, on_error="skip", cache=False)
    names = [f"{p.parent.name}/{p.name}" for p, _ in report.skipped]
    assert names == ["cat/001.png", "dog/004.png"]
    expected = [
        np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        for name in ("cat", "dog")
        for path in sorted((folder / name).glob("*.png"))
        if path.stat().st_size > 5
    ]
    assert torch.equal(data.images, torch.from_numpy(np.stack(expected)))
    assert data.labels.tolist() == [0] * 8 + [1] * 8
    with pytest.raises(DataFormatError, match=r"cat/001\.png: expected a PNG or JPEG"):
        load(folder, cache=False)  # the first bad file in listing order is the one named


def test_a_large_decode_says_so_off_a_terminal(tmp_path, cache, parallel, capsys):
    folder = write_folder(tmp_path / "pets")
    load(folder, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("decoding 12 images of ") and "cached" in lines[0]
    assert lines[1].startswith("decoded 12 images in ")
    load(folder, progress=True)  # read from the cache: nothing to say
    assert capsys.readouterr().err == ""


REAL = os.environ.get("CNNLAB_DATA")


@pytest.mark.skipif(
    not REAL, reason="CNNLAB_DATA is unset: the real CIFAR-10-JPEG is not available"
)
def test_real_cifar10_jpeg_test_split_decodes_once_then_reads_the_cache(cache):
    folder = Path(REAL) / "cifar10-jpeg"
    first, report, _ = load(folder, split="test")
    assert report.cache == "decoded" and first.images.shape == (10_000, 3, 32, 32)
    assert first.class_counts().tolist() == [1000] * 10 and "airplane" in first.classes
    second, report, _ = load(folder, split="test")
    assert report.cache == "read" and torch.equal(first.images, second.images)


def test_a_failing_cache_write_inside_safetensors_costs_only_a_warning(tmp_path, cache,
                                                                      monkeypatch):  # fmt: skip
    from safetensors import SafetensorError

    from cnnlab.data import decode_cache

    def full_disk(*args, **kwargs):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(decode_cache, "save_file", full_disk)
    data, report, caught = load(write_folder(tmp_path / "pets"))
    assert len(data) == 12 and report.cache == "decoded"
    assert len(caught) == 1 and "No space left on device" in caught[0]


def test_the_folder_may_be_the_working_directory(tmp_path, cache, monkeypatch):
    folder = write_folder(tmp_path / "pets")
    (folder / "dog" / "bad.png").write_bytes(b"not an image")
    monkeypatch.chdir(folder)
    _, report, _ = load(".", on_error="skip")
    assert [str(path) for path, _ in report.skipped] == ["dog/bad.png"]
    assert report.names[0] == "cat/000.png" and len(report.names) == 12
    _, again, caught = load(".", on_error="skip")
    assert again.cache == "read" and not caught
