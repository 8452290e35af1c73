"""Which files an image folder holds: its splits, its classes, and the label of every image.

A *class-folder tree* holds one subfolder per class; the class names are the sorted subfolder
names and the label of an image is the index of its folder in that list. A folder is either one
class-folder tree (a *flat* folder, one split: ask for it with `split=None` or `split="all"`;
asking a flat folder for "train" is an error), or it has *split folders* `train/`, `val/`,
`test/` (any of them), each a class-folder tree with the same classes, and `split` picks one of
them (required). Top-level folders cannot mix split names and class names.

Only `.png`, `.jpg` and `.jpeg` files (any case) directly inside a class folder are images, in
sorted order; other files and nested folders are listed as ignored, and hidden names (starting
with ".") are left out silently. Nothing here opens an image: `cnnlab.data.folder` reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import DataError, MissingDataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FolderListing:
    """The images of one class-folder tree, with their labels, and the entries left out."""

    root: Path  # the class-folder tree
    name: str  # ImageSet name: "<folder>" or "<folder>/<split>"
    classes: list[str]
    files: list[Path]
    labels: list[int]
    ignored: list[Path]
    stats: list[tuple[int, int]]  # each file's (size in bytes, modification time in ns)

    def relative_names(self) -> list[str]:
        """Each file's path relative to `root` ("class/file.png"), the way `list_folder` built
        it (Path.relative_to costs 10 us a file; 60,000 files would take 0.5 s)."""
        prefix = 0 if str(self.root) == "." else len(str(self.root)) + 1
        return [str(file)[prefix:] for file in self.files]


def split_folders(path: Path) -> list[str]:
    """The split folders `path` has, in the order train, val, test; empty for a flat folder."""
    present = set(_visible_folders(path))
    return [name for name in SPLIT_NAMES if name in present]


def list_folder(path: Path, split: str | None) -> FolderListing:
    """The class-folder tree that `split` picks in `path`, listed; see the module docstring."""
    if not path.exists():
        raise MissingDataError(f"{path}: no such folder; expected a folder of class subfolders")
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder of class subfolders, found a file")
    subfolders = _visible_folders(path)
    splits = [name for name in subfolders if name in SPLIT_NAMES]
    if not splits:
        if split not in (None, "all"):
            raise DataError(
                f"{path}: split={split!r} asked for, but the folder has no train/, val/ or "
                "test/ subfolders; it is one split: use split=None (or 'all')"
            )
        return _list_tree(path, path.resolve().name)
    others = sorted(set(subfolders) - set(splits))
    if others:
        raise DataError(
            f"{path}: expected either split folders (train/, val/, test/) or class folders, "
            f"found both: splits {splits} and other folders {others}"
        )
    if split not in splits:
        raise DataError(
            f"{path}: has split folders {splits}; choose one with split=..., found split={split!r}"
        )
    _check_same_classes(path, splits)
    return _list_tree(path / split, f"{path.resolve().name}/{split}")


def _visible_folders(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _check_same_classes(path: Path, splits: list[str]) -> None:
    classes = {split: set(_visible_folders(path / split)) for split in splits}
    union = set().union(*classes.values())
    lacking = [f"{s}/ lacks {sorted(union - c)}" for s, c in classes.items() if c != union]
    if lacking:
        raise DataError(
            f"{path}: expected the same class folders in every split, found " + "; ".join(lacking)
        )


def _list_tree(root: Path, name: str) -> FolderListing:
    classes = _visible_folders(root)
    if not classes:
        raise DataError(
            f"{root}: expected one subfolder per class holding .png/.jpg/.jpeg images, "
            "found no class folders"
        )
    listing = FolderListing(root, name, classes, [], [], [], [])
    with os.scandir(root) as entries:  # loose files beside the class folders
        listing.ignored += sorted(
            Path(e.path) for e in entries if not (e.name.startswith(".") or e.is_dir())
        )
    for label, class_name in enumerate(classes):
        images, stats, ignored = _list_class(root / class_name)
        if not images:
            raise DataError(
                f"{root / class_name}: empty class folder; expected .png/.jpg/.jpeg images, "
                f"found {len(ignored)} other entries"
            )
        listing.files += images
        listing.stats += stats
        listing.labels += [label] * len(images)
        listing.ignored += ignored
    return listing


def _list_class(folder: Path) -> tuple[list[Path], list[tuple[int, int]], list[Path]]:
    """The image files of one class folder with their sizes and modification times, and the
    other entries, both sorted by name."""
    images, stats, ignored = [], [], []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(Path(entry.path))
                stat = entry.stat()
                stats.append((stat.st_size, stat.st_mtime_ns))
            else:
                ignored.append(Path(entry.path))
    return images, stats, ignored
