"""A cache of decoded image folders, so that only the first run pays for decoding the JPEGs.

An image folder is decoded once into uint8 tensors and kept as one safetensors file under the
user's cache folder: `$CNNLAB_CACHE` if set, else `$XDG_CACHE_HOME/cnnlab`, else
`~/.cache/cnnlab`; never inside the dataset folder, which may be read-only. The file's name
says which folder and reading options it belongs to; its `key` (kept in the file's metadata) is
a hash of everything the decoded result depends on: every image file's relative path, label,
size and modification time, the class list and the reading options. Any change to the folder
changes the key, and the stale file is replaced.

A cache file is trusted only when it parses as safetensors, carries this format's name,
version and the expected key, and its tensors have the shapes and labels the listing implies;
anything else (a truncated write, another program's file, a hand-edited one) is decoded again
and overwritten. Nothing is unpickled. Writing is atomic; a cache folder that cannot be written
(read-only, full) only costs the next run another decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cnnlab.data.folder_layout import FolderListing
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_path

FORMAT = "cnnlab-decoded-image-folder"
VERSION = "1"
STALE = "written for another state of the folder"  # an expected miss, not a damaged file


def cache_root() -> Path:
    """The user's cnnlab cache folder (not created here)."""
    if os.environ.get("CNNLAB_CACHE"):
        return Path(os.environ["CNNLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cnnlab"


@dataclass
class Decoded:
    """What decoding a folder produced: the kept images and labels, and the skipped files
    (relative path, reason)."""

    images: torch.Tensor  # N x C x H x W uint8
    labels: torch.Tensor  # N int64
    skipped: list[tuple[str, str]]


@dataclass
class CacheEntry:
    """Where one folder's decoded images live in the cache, and the key they must carry."""

    path: Path
    key: str
    expected_labels: list[int]  # every listed file's label, in listing order
    relative_files: list[str]

    @classmethod
    def for_listing(cls, listing: FolderListing, options: dict) -> CacheEntry:
        root, labels = listing.root, listing.labels
        relative = listing.relative_names()
        content = hashlib.sha256()
        content.update(json.dumps([FORMAT, VERSION, options], sort_keys=True).encode())
        for name, label, (size, mtime) in zip(relative, labels, listing.stats, strict=True):
            # fsencode: a file name need not be valid UTF-8 (surrogate-escaped bytes)
            content.update(os.fsencode(name))
            content.update(f"\0{label}\0{size}\0{mtime}\n".encode())
        # one file per folder and options: a changed folder replaces its file, not adds one
        place = hashlib.sha256(json.dumps([str(root.resolve()), options]).encode())
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", root.resolve().name)[:40]
        name = f"{readable}-{place.hexdigest()[:16]}.safetensors"
        return cls(cache_root() / "images" / name, content.hexdigest(), labels, relative)

    def read(self) -> tuple[Decoded | None, str]:
        """The cached result, or None and why it was not used ("" when there is no file)."""
        if not self.path.is_file():
            return None, ""
        try:
            with safe_open(self.path, framework="pt") as file:
                metadata = file.metadata() or {}
                tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            return None, f"unreadable ({error})"
        problem = self._problem(tensors, metadata)
        if problem:
            return None, problem
        skipped = [tuple(pair) for pair in json.loads(metadata["skipped"])]
        return Decoded(tensors["images"], tensors["labels"], skipped), ""

    def _problem(self, tensors: dict, metadata: dict) -> str:
        if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
            return "not a cnnlab image cache of this version"
        if metadata.get("key") != self.key:
            return STALE
        images, labels = tensors.get("images"), tensors.get("labels")
        if images is None or labels is None or images.dtype != torch.uint8 or images.ndim != 4:
            return "its tensors are not uint8 images N x C x H x W with labels"
        try:
            skipped = {name for name, _ in json.loads(metadata["skipped"])}
        except (KeyError, ValueError, TypeError):
            return "its list of skipped files is unreadable"
        kept = [
            label
            for name, label in zip(self.relative_files, self.expected_labels, strict=True)
            if name not in skipped
        ]
        if images.shape[0] != len(kept) or images.shape[1] not in (1, 3):
            return f"it holds {tuple(images.shape)} images where {len(kept)} were expected"
        if labels.dtype != torch.int64 or not torch.equal(labels, torch.tensor(kept)):
            return "its labels differ from the folder's"
        return ""

    def write(self, decoded: Decoded) -> str:
        """Store `decoded`; "" on success, else why it could not be stored."""
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "key": self.key,
            "skipped": json.dumps(decoded.skipped),
        }
        tensors = {"images": decoded.images.contiguous(), "labels": decoded.labels}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as temp:
                save_file(tensors, temp, metadata=metadata)
        except (OSError, CnnlabError, SafetensorError) as error:  # safetensors wraps OSError
            return str(error)
        return ""
