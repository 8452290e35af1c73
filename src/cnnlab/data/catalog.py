"""The datasets cnnlab knows by name: where their files live, where they come from, checksums.

Data lives under a root folder: the `root` argument (`--data-dir` on the CLI), else the
`CNNLAB_DATA` environment variable, else the user cache (`$XDG_CACHE_HOME/cnnlab/data`, by
default `~/.cache/cnnlab/data`). Each dataset has its own folder there with the standard file
names, e.g. `<root>/fashion-mnist/train-images-idx3-ubyte.gz`.

The checksums are the MD5 sums published beside each official download (the Fashion-MNIST and
MNIST READMEs, the KMNIST repository, the CIFAR page); downloads are verified against them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: its name on disk, the official URL first then mirrors, its MD5."""

    name: str
    urls: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # under the root
    format: str  # "idx", "cifar10" or "cifar100"
    splits: dict[str, tuple[str, ...]]  # split -> the files it reads, relative to the folder
    downloads: tuple[RemoteFile, ...]  # fetched into the root when files are missing
    classes: tuple[str, ...]  # empty where the files name them (CIFAR-100)
    url: str  # the dataset's home page, for the by-hand instructions


def idx_spec(name: str, base_urls: tuple[str, ...], md5s: dict[str, str], classes, url: str):
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    downloads = tuple(
        RemoteFile(file, tuple(base + file for base in base_urls), md5s[file])
        for split in files.values()
        for file in split
    )
    return DatasetSpec(name, name, "idx", files, downloads, tuple(classes), url)


FASHION_MNIST = idx_spec(
    "fashion-mnist",
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "https://github.com/zalandoresearch/fashion-mnist",
)

MNIST = idx_spec(
    "mnist",
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    tuple(str(digit) for digit in range(10)),
    "http://yann.lecun.com/exdb/mnist/",
)

KMNIST = idx_spec(
    "kmnist",
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "https://github.com/rois-codh/kmnist",
)

CIFAR10 = DatasetSpec(
    "cifar10",
    "cifar-10-batches-bin",
    "cifar10",
    {
        "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test": ("test_batch.bin",),
    },
    (
        RemoteFile(
            "cifar-10-binary.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
            "c32a1d4ab5d03f1284b67883e8d87530",
        ),
    ),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "https://www.cs.toronto.edu/~kriz/cifar.html",
)

CIFAR100 = DatasetSpec(
    "cifar100",
    "cifar-100-binary",
    "cifar100",
    {
        split: (f"{split}.bin", "fine_label_names.txt", "coarse_label_names.txt")
        for split in ("train", "test")
    },
    (
        RemoteFile(
            "cifar-100-binary.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
            "03b5dce01913d631647c71ecec9e9cb8",
        ),
    ),
    (),
    "https://www.cs.toronto.edu/~kriz/cifar.html",
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (FASHION_MNIST, MNIST, KMNIST, CIFAR10, CIFAR100)
}


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `root`, else $CNNLAB_DATA, else the user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("CNNLAB_DATA"):
        return Path(os.environ["CNNLAB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cnnlab" / "data"
