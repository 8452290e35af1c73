"""Weights and checkpoints are safetensors, bit-exact, and nothing is ever unpickled.

A real run writes safetensors files only; weights of every float dtype round-trip bit for bit.
Five pickle payloads that create a marker file when unpickled are proved to do so with an unsafe
loader, then given to every in-process reader of weights or checkpoints (load_checkpoint,
read_weights, load_model, load_trained behind eval and predict, build_model behind --init-from):
each refuses them with one error naming the file, and the marker never appears. A scan of the
source finds no unpickler to fall back on.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from weight_file_inputs import (
    PAYLOADS,
    reader_calls,
    refused,
    tensors_and_metadata,
)

import cnnlab
from cnnlab.runs.weights import load_model, read_weights, save_weights

SRC = Path(cnnlab.__file__).parent
# What the refusal says: a zip archive or a binary pickle is named as one; the others are not
# safetensors either, so their first 8 bytes make an impossible header length.
PAYLOAD_REFUSALS = {
    "torch.save": "is a torch.save/pickle file, not safetensors; cnnlab never unpickles",
    "torch.save-legacy": "is a torch.save/pickle file, not safetensors; cnnlab never unpickles",
    "pickle-protocol-0": "it is truncated or another format",
    "pickle-protocol-5": "is a torch.save/pickle file, not safetensors; cnnlab never unpickles",
    "npy-object-array": "it is truncated or another format",
}


def unsafe_load(kind: str, path: Path) -> None:
    """How the payload would be loaded by a reader that trusts it."""
    if kind.startswith("torch"):
        torch.load(path, weights_only=False)
    elif kind.startswith("pickle"):
        pickle.loads(path.read_bytes())
    else:
        np.load(path, allow_pickle=True)


# ---- safetensors by default, bit-exact ----------------------------------------------------------


def test_a_run_exports_safetensors_only(workspace):
    run = workspace / "run"
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    weight_files = [name for name in files if name.endswith(".safetensors")]
    assert {"checkpoints/last.safetensors", "model.safetensors"} <= set(weight_files)
    assert not [name for name in files if name.endswith((".pt", ".pth", ".pkl", ".bin"))]
    for name in weight_files:
        head = (run / name).read_bytes()[:8]
        assert not head.startswith((b"PK", b"\x80"))  # neither a torch.save zip nor a pickle
        tensors_and_metadata(run / name)  # plain safetensors, readable by safetensors itself


def special_values(dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    values = [0.0, -0.0, 1.0, -1.0, info.tiny, -info.tiny, info.max, info.min, info.eps]
    values += [info.tiny / 4, 1 / 3, 3.14159265358979]  # a subnormal, inexact values
    generator = torch.Generator().manual_seed(0)
    return torch.cat([torch.tensor(values, dtype=dtype), torch.randn(64, generator=generator)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_weights_round_trip_bit_exactly(tmp_path, dtype):
    model = nn.Sequential(nn.Linear(4, 19), nn.BatchNorm1d(19)).to(dtype)
    with torch.no_grad():
        model[0].weight.view(-1)[:76] = special_values(dtype)
    model[1].num_batches_tracked.fill_(2**40 + 3)  # an int64 no float could hold
    path = tmp_path / "model.safetensors"
    save_weights(path, model, {"model": "custom", "note": "ünïcode"})
    weights, metadata = read_weights(path)
    assert metadata == {"model": "custom", "note": "ünïcode"}
    saved = model.state_dict()
    assert weights.keys() == saved.keys()
    for key, value in saved.items():
        assert weights[key].dtype == value.dtype
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[value.element_size()]
        assert torch.equal(weights[key].view(bits), value.view(bits)), key  # -0.0 included
    again = tmp_path / "again.safetensors"
    fresh = nn.Sequential(nn.Linear(4, 19), nn.BatchNorm1d(19)).to(dtype)
    fresh.load_state_dict(weights)
    save_weights(again, fresh, metadata)
    assert again.read_bytes() == path.read_bytes()  # the same weights give the same bytes


def test_run_weights_load_into_the_same_network(workspace):
    run = workspace / "run"
    model, metadata = load_model(run / "model.safetensors")
    weights, _ = tensors_and_metadata(run / "checkpoints" / "last.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[f"model.{key}"]), key
    assert metadata["model"] == "lenet" and metadata["num_classes"] == 10


# ---- no code runs: pickle payloads --------------------------------------------------------------


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_payloads_run_code_when_unpickled(tmp_path, kind):
    """The control: an unsafe loader does create the marker, so its absence below means
    something."""
    marker = tmp_path / "created-by-payload"
    path = tmp_path / "payload.pt"
    PAYLOADS[kind](path, marker)
    unsafe_load(kind, path)
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_pickle_payloads_are_refused_by_every_reader(tmp_path, kind):
    marker = tmp_path / "created-by-payload"
    for name in ("model.safetensors", "last.safetensors", "weights.pt"):
        path = tmp_path / name
        PAYLOADS[kind](path, marker)
        for read in reader_calls().values():
            refused(read, path, PAYLOAD_REFUSALS[kind])
        assert not marker.exists()


def test_no_reader_can_unpickle():
    """No unsafe loader anywhere in cnnlab, so there is no unsafe retry either: no
    pickle/dill/joblib/marshal/shelve, no numpy load with allow_pickle=True, and torch.load
    only with weights_only=True written at the call (importing torchvision-layout .pth files)."""
    unsafe_modules = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve"}
    found = []
    for source in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            where = f"{source.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                if unsafe_modules & {str(name).split(".")[0] for name in names}:
                    found.append(f"{where} imports an unpickler")
                if getattr(node, "module", None) == "torch" and "load" in names:
                    found.append(f"{where} imports torch.load")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}  # None: **kwargs
            safe = keywords.get("weights_only") == "True" and None not in keywords
            if func in ("torch.load", "torch.serialization.load") and not safe:
                found.append(f"{where} calls {func} without weights_only=True")
            if func == "Unpickler":
                found.append(f"{where} calls {func}")
            for keyword in node.keywords:
                value = ast.unparse(keyword.value)
                if (keyword.arg, value) in (("weights_only", "False"), ("allow_pickle", "True")):
                    found.append(f"{where} passes {keyword.arg}={value}")
    assert found == []
