"""Datasets from files on disk to batches on the device.

`load_dataset(name_or_path, split)` returns an `ImageSet` (uint8 images N x C x H x W, int64
labels, class names) for a named dataset (Fashion-MNIST, MNIST, KMNIST, CIFAR-10, CIFAR-100,
downloaded with verified checksums when missing) or for an image folder of the user's own;
`dataset_splits(name_or_path)` names the splits it can load.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.data.catalog import DATASETS, DatasetSpec, resolve_root
from cnnlab.data.cifar import read_cifar10, read_cifar100
from cnnlab.data.dataset import ImageSet
from cnnlab.data.download import ensure_files
from cnnlab.data.folder import load_image_folder, load_image_folder_with_report
from cnnlab.data.folder_layout import split_folders
from cnnlab.data.idx import check_pair, read_idx_images, read_idx_labels
from cnnlab.data.splits import name_split
from cnnlab.errors import DataError

FLAT_TEST_FRACTION = 0.2  # of a folder without split folders, its "test" split

__all__ = ["DATASETS", "ImageSet", "dataset_splits", "load_dataset", "resolve_root"]


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
) -> ImageSet:
    """Load one split of a named dataset (files under `root`, see `resolve_root`) or of an image
    folder (`name_or_path` is then the folder; `split` picks its train/val/test subfolder).

    `split=None` means "train", or the whole folder for an image folder without split folders.
    Such a *flat* folder also has a "train" and a "test" split: about 20% of every class held
    out by the hash of each file's name (`splits.name_split`), so the split stays the same
    when files are added or removed, and training and `cnnlab eval` agree on it.
    """
    name = str(name_or_path)
    if name in DATASETS:
        spec = DATASETS[name]
        split = split or "train"
        if split not in spec.splits:
            raise DataError(
                f"{name} has no split {split!r}; its splits are: {', '.join(spec.splits)}"
            )
        folder = ensure_files(spec, resolve_root(root), download=download, progress=progress)
        return _read_named(spec, folder, split)
    path = _image_folder(name_or_path)
    if split is None and (path / "train").is_dir():
        split = "train"
    if split in ("train", "test") and not split_folders(path):
        whole, report = load_image_folder_with_report(path, None, progress=progress)
        train, test = name_split(report.names, whole.labels, FLAT_TEST_FRACTION)
        return whole.subset(train if split == "train" else test, f"{whole.name}/{split}")
    return load_image_folder(path, split, progress=progress)


def dataset_splits(name_or_path: str | os.PathLike) -> list[str]:
    """The splits `load_dataset` can load, train first: a named dataset's, an image folder's
    train/val/test folders, or ["all"] for an image folder without split folders."""
    name = str(name_or_path)
    if name in DATASETS:
        return list(DATASETS[name].splits)
    return split_folders(_image_folder(name_or_path)) or ["all"]


def _image_folder(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise DataError(
        f"unknown dataset {str(name_or_path)!r}: expected one of {', '.join(DATASETS)} or an "
        f"image folder (one subfolder per class), and no folder {path} exists"
    )


def _read_named(spec: DatasetSpec, folder: Path, split: str) -> ImageSet:
    files = spec.splits[split]
    classes = list(spec.classes)
    if spec.format == "idx":
        images = read_idx_images(folder / files[0])
        labels = read_idx_labels(folder / files[1], len(classes))
        check_pair(images, labels, folder / files[0], folder / files[1])
    elif spec.format == "cifar10":
        images, labels = read_cifar10(folder, files)
    else:
        images, labels, classes = read_cifar100(folder, [f for f in files if f.endswith(".bin")])
    return ImageSet(f"{spec.name}/{split}", images, labels, classes)
