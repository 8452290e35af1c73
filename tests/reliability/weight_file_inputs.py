"""Bad weight and checkpoint files for the weight-file tests, the readers they are given to, and
the real training run the bad files are made from.

A pickle payload creates a marker file when unpickled, so a test can tell whether a reader ran
it. Damaged files are cut, random or lying (headers that claim more memory or bytes than the
file holds); non-finite and misfit ones are written by safetensors itself with a checksum that
fits, so that they are refused for what they hold and not for a checksum a hostile writer could
fake. `refused` checks the one thing every refusal must be: a CheckpointError naming the file on
one line.
"""

from __future__ import annotations

import json
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CheckpointError
from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.runs.config import TrainConfig
from cnnlab.runs.tensorfile import CHECKSUM_FIELD, tensor_checksum
from cnnlab.runs.trained import load_trained
from cnnlab.runs.weights import load_model, read_weights, save_weights
from cnnlab.train.setup import build_model
from cnnlab.train.trainer import Trainer

# ---- pickle payloads ----------------------------------------------------------------------------


class Payload:
    """What a hostile checkpoint holds: unpickling it calls open(marker, "w"), creating a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_zip_payload(path: Path, marker: Path) -> None:
    torch.save({"model.fc.weight": Payload(marker), "w": torch.zeros(2)}, path)


def torch_legacy_payload(path: Path, marker: Path) -> None:
    torch.save({"model.fc.weight": Payload(marker)}, path, _use_new_zipfile_serialization=False)


def pickle_payload(protocol: int):
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=protocol))

    return write


def npy_payload(path: Path, marker: Path) -> None:
    with open(path, "wb") as file:
        np.save(file, np.array([Payload(marker)], dtype=object), allow_pickle=True)


PAYLOADS = {
    "torch.save": torch_zip_payload,
    "torch.save-legacy": torch_legacy_payload,
    "pickle-protocol-0": pickle_payload(0),
    "pickle-protocol-5": pickle_payload(5),
    "npy-object-array": npy_payload,
}


# ---- a real training run, and files derived from it ---------------------------------------------

_WORKSPACE: dict[str, Path] = {}


def trained_workspace(data: Path, tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run (`run/`) on the fake Fashion-MNIST `data` (linked as
    `data`), a PNG image and the good files bad ones are made from; trained once per session
    for every test module that reads it (none of them changes it)."""
    if not _WORKSPACE:
        root = tmp_path_factory.mktemp("weights")
        config = TrainConfig(
            model="lenet",
            dataset="fashion-mnist",
            data_dir=str(data),
            out=str(root / "run"),
            epochs=1,
            batch_size=16,
            lr=0.1,
            device="cpu",
            quiet=True,
            precision="fp32",
            memory_format="contiguous",
        )
        Trainer(config, echo=lambda *args: None).fit()
        (root / "data").symlink_to(data)
        Image.new("L", (28, 28), 80).save(root / "image.png")
        _WORKSPACE["root"] = root
    return _WORKSPACE["root"]


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()  # noqa: SIM118


def resealed(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` with its checksum made to fit `tensors`, as a hostile writer would make it:
    such a file must be refused for what it holds, not for a checksum it could fake."""
    sealed = {}
    for key, text in metadata.items():
        document = json.loads(text)
        document[CHECKSUM_FIELD] = tensor_checksum(tensors)
        sealed[key] = json.dumps(document)
    return sealed


def with_value(source: Path, target: Path, key: str, value: float) -> Path:
    """A copy of a safetensors file with one element of tensor `key` set to `value`, written by
    safetensors itself (cnnlab's writer refuses non-finite weights)."""
    tensors, metadata = tensors_and_metadata(source)
    tensors[key].view(-1)[0] = value
    save_file(tensors, target, metadata=resealed(tensors, metadata))
    return target


def other_weights(workspace: Path, target: Path, model: nn.Module) -> Path:
    """`model`'s weights under the run's own metadata (a lenet for 10 classes)."""
    _, metadata = read_weights(workspace / "run" / "model.safetensors")
    save_weights(target, model, metadata)
    return target


def lenet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet", num_classes=num_classes, in_channels=1)


# ---- damaged and lying files --------------------------------------------------------------------


def header_file(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


def tensor(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


GIB = 2**30
# Headers that lie: each claims far more memory than the file holds, or bytes it does not have.
LYING_HEADERS = {
    "header-length-beyond-file": lambda good: struct.pack("<Q", len(good)) + good[8:],
    "header-length-2**63": lambda good: struct.pack("<Q", 2**63) + good[8:],
    "header-length-99MB": lambda good: struct.pack("<Q", 99_000_000) + good[8:],
    "offsets-beyond-file-1GiB": lambda good: header_file(
        {"model.fc.weight": tensor("F32", [GIB // 4], 0, GIB)}, bytes(16)
    ),
    "offsets-overlapping": lambda good: header_file(
        {"a": tensor("F32", [4], 0, 16), "b": tensor("F32", [4], 8, 24)}, bytes(24)
    ),
    "offsets-reversed": lambda good: header_file({"a": tensor("F32", [1], 4, 0)}, bytes(4)),
    "offsets-with-gap": lambda good: header_file(
        {"a": tensor("F32", [1], 0, 4), "b": tensor("F32", [1], 8, 12)}, bytes(12)
    ),
    "offsets-cover-part-of-data": lambda good: header_file(
        {"a": tensor("F32", [1], 0, 4)}, bytes(GIB // 1024)
    ),
    "dtype-size-wrong": lambda good: header_file({"a": tensor("F64", [4], 0, 16)}, bytes(16)),
    "shape-2**40-float64": lambda good: header_file(
        {"a": tensor("F64", [2**40], 0, 16)}, bytes(16)
    ),
    "shape-overflows-u64": lambda good: header_file(
        {"a": tensor("F32", [2**62, 2**62], 0, 16)}, bytes(16)
    ),
    "negative-shape": lambda good: header_file(
        b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', bytes(4)
    ),
    "unknown-dtype": lambda good: header_file({"a": tensor("Q9", [1], 0, 4)}, bytes(4)),
    "header-not-json": lambda good: header_file(b"[" * 4096),
    "header-not-utf8": lambda good: header_file(b"\xff\xfe{}"),
    "metadata-not-strings": lambda good: header_file({"__metadata__": {"cnnlab": 1}}),
}
CORRUPT = {
    "empty": lambda good: b"",
    "5-bytes": lambda good: good[:5],
    "zero-header": lambda good: bytes(8),
    "truncated-in-header": lambda good: good[:100],
    "truncated-by-1-byte": lambda good: good[:-1],
    "truncated-to-half": lambda good: good[: len(good) // 2],
    "random-4KiB": lambda good: random.Random(1).randbytes(4096),
    "random-1MiB": lambda good: random.Random(2).randbytes(2**20),
    "random-same-size": lambda good: random.Random(3).randbytes(len(good)),
    "text": lambda good: b"model = lenet\nweights = yes\n",
    "json": lambda good: b'{"fc.weight": [[1, 2], [3, 4]]}',
    "flipped-header-byte": lambda good: good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],
    **LYING_HEADERS,
}


# ---- the readers --------------------------------------------------------------------------------


def reader_calls() -> dict:
    """Every in-process reader of a checkpoint or weights path."""
    return {
        "load_checkpoint": lambda path: load_checkpoint(path, lenet()),
        "read_weights": read_weights,
        "load_model": load_model,
        "load_trained (eval, predict)": lambda path: load_trained(str(path)),
        "build_model (--init-from)": lambda path: build_model(
            TrainConfig(model="lenet", init_from=str(path)), 10, 1
        ),
    }


def refused(read, path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as error:
        read(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message
