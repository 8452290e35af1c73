"""Checksums: a tensor file damaged after it was written is refused, never silently loaded.

Every checkpoint and weights file cnnlab writes carries a SHA-256 of its tensors (tensorfile.py).
Flipping any single bit of the tensor data (which leaves a valid safetensors file holding other
numbers) makes every reader refuse it, naming the file; the same file as written loads, and a
file without a checksum (written by another tool) still loads.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CheckpointError
from cnnlab.runs.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.runs.tensorfile import CHECKSUM_FIELD, tensor_checksum
from cnnlab.runs.weights import read_weights, save_weights


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def written(tmp_path, kind: str):
    model = small_model()
    model(torch.zeros(2, 1, 6, 6))
    path = tmp_path / f"{kind}.safetensors"
    if kind == "weights":
        save_weights(path, model, {"model": "custom"})
        return path, read_weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 1, 6, 6)).sum().backward()
    optimizer.step()
    save_checkpoint(path, model, optimizer, state={"epoch": 1})
    return path, lambda p: load_checkpoint(p, model, optimizer)


def data_start(path) -> int:
    with open(path, "rb") as file:
        return 8 + int.from_bytes(file.read(8), "little")


@pytest.mark.parametrize("kind", ["weights", "checkpoint"])
def test_every_single_bit_flip_in_the_tensor_data_is_refused(tmp_path, kind):
    path, read = written(tmp_path, kind)
    whole = path.read_bytes()
    read(path)  # as written: loads
    start = data_start(path)
    positions = range(start, len(whole), max(1, (len(whole) - start) // 97))
    for position in positions:
        for bit in (0, 7):
            damaged = bytearray(whole)
            damaged[position] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            with pytest.raises(CheckpointError) as error:
                read(path)
            assert str(error.value) == (
                f"{path} is damaged: its tensors no longer match the SHA-256 checksum written "
                "with them (the file changed on disk or in a copy); nothing was loaded from it"
            )
    assert len(positions) >= 90


def test_the_checksum_covers_names_dtypes_and_shapes():
    base = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    variants = [
        {"b": base["a"]},
        {"a": base["a"].reshape(3, 2)},
        {"a": base["a"].view(torch.int32)},
        {"a": base["a"].clone().index_fill_(1, torch.tensor([0]), 9.0)},
    ]
    digests = {tensor_checksum(base)} | {tensor_checksum(v) for v in variants}
    assert len(digests) == 1 + len(variants)
    assert tensor_checksum({"a": base["a"].t().contiguous().t()}) == tensor_checksum(base)


def test_a_file_without_a_checksum_still_loads(tmp_path):
    """Weights written by another tool (or before checksums) carry none: nothing to check."""
    path, _ = written(tmp_path, "weights")
    with safe_open(path, "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        description = json.loads(handle.metadata()["cnnlab"])
    assert CHECKSUM_FIELD in description
    del description[CHECKSUM_FIELD]
    save_file(tensors, path, metadata={"cnnlab": json.dumps(description)})
    weights, metadata = read_weights(path)
    assert metadata == {"model": "custom"} and weights.keys() == tensors.keys()
    save_file(tensors, path)  # and no metadata at all
    assert read_weights(path)[1] == {}


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """One metadata entry: safetensors writes several in no fixed order."""
    model = small_model()
    model(torch.zeros(1, 1, 6, 6))
    for name in ("a", "b", "c"):
        save_weights(tmp_path / name, model, {"model": "custom", "note": "x"})
    assert len({(tmp_path / name).read_bytes() for name in ("a", "b", "c")}) == 1
