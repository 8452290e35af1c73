"""Weight and checkpoint files: safetensors by default and bit-exact; nothing is ever unpickled;
every bad file is refused with one clear error naming it, without a large allocation; non-finite
weights are neither loaded nor written.

The bad inputs are real files on disk, given to every reader of weights or checkpoints: in this
process (load_checkpoint, read_weights, load_model, load_trained behind eval and predict, and
build_model behind --init-from) and through real `python -m cnnlab` processes (eval, predict,
train --resume, train --init-from). A pickle payload creates a marker file when unpickled; the
tests prove it does with torch's unsafe loader, then that no reader of cnnlab lets it appear.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import cnnlab
from cnnlab.errors import CheckpointError
from cnnlab.models import create_model
from cnnlab.train.checkpoint import (
    load_checkpoint,
    load_model,
    read_weights,
    save_checkpoint,
    save_weights,
)
from cnnlab.train.config import TrainConfig
from cnnlab.train.inference import load_trained
from cnnlab.train.setup import build_model
from cnnlab.train.trainer import Trainer

SRC = Path(cnnlab.__file__).parent


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


# ---- a real training run, and files derived from it ---------------------------------------------


@pytest.fixture(scope="module")
def workspace(shared_data, tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run (`run/`) on the fake Fashion-MNIST (`data`), a PNG image
    and the good files bad ones are made from."""
    root = tmp_path_factory.mktemp("weights")
    config = TrainConfig(
        model="lenet",
        dataset="fashion-mnist",
        data_dir=str(shared_data),
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
    (root / "data").symlink_to(shared_data)
    Image.new("L", (28, 28), 80).save(root / "image.png")
    return root


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()  # noqa: SIM118


def with_value(source: Path, target: Path, key: str, value: float) -> Path:
    """A copy of a safetensors file with one element of tensor `key` set to `value`, written by
    safetensors itself (cnnlab's writer refuses non-finite weights)."""
    tensors, metadata = tensors_and_metadata(source)
    tensors[key].view(-1)[0] = value
    save_file(tensors, target, metadata=metadata)
    return target


def other_weights(workspace: Path, target: Path, model: nn.Module) -> Path:
    """`model`'s weights under the run's own metadata (a lenet for 10 classes)."""
    _, metadata = read_weights(workspace / "run" / "model.safetensors")
    save_weights(target, model, metadata)
    return target


def lenet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet", num_classes=num_classes, in_channels=1)


# ---- bad files ----------------------------------------------------------------------------------


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
    """No unsafe loader anywhere in cnnlab, so there is no unsafe retry either: no torch.load,
    pickle/dill/joblib/marshal/shelve load, numpy load with allow_pickle=True, or
    weights_only=False."""
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
            if func in ("torch.load", "torch.serialization.load", "Unpickler"):
                found.append(f"{where} calls {func}")
            for keyword in node.keywords:
                value = ast.unparse(keyword.value)
                if (keyword.arg, value) in (("weights_only", "False"), ("allow_pickle", "True")):
                    found.append(f"{where} passes {keyword.arg}={value}")
    assert found == []


# ---- damaged, foreign and lying files -----------------------------------------------------------


@pytest.mark.parametrize("kind", CORRUPT)
def test_damaged_files_are_refused_by_every_reader(workspace, tmp_path, kind):
    run = workspace / "run"
    for good in (run / "model.safetensors", run / "checkpoints" / "last.safetensors"):
        path = tmp_path / good.name
        path.write_bytes(CORRUPT[kind](good.read_bytes()))
        for read in reader_calls().values():
            refused(read, path)


def test_what_is_not_a_regular_file_is_refused(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # opening it would block until a writer came
    for read in reader_calls().values():
        refused(read, fifo, "not a regular file")
        refused(read, tmp_path / "missing.safetensors", "does not exist")
    refused(read_weights, folder, "is a folder")


def test_the_kind_of_damage_is_named(workspace, tmp_path):
    good = (workspace / "run" / "model.safetensors").read_bytes()
    expected = {
        "empty": "is empty",
        "5-bytes": "fewer than its 8-byte header length",
        "truncated-in-header": "it is truncated or another format",
        "truncated-by-1-byte": "file not fully covered",
        "header-length-2**63": f"header claims {2**63} bytes",
        "offsets-overlapping": "invalid offset for tensor `b`",
        "dtype-size-wrong": "invalid shape, data type, or offset",
        "shape-overflows-u64": "overflow computing buffer size",
        "header-not-utf8": "invalid UTF-8",
    }
    for kind, fragment in expected.items():
        path = tmp_path / f"{kind}.safetensors"
        path.write_bytes(CORRUPT[kind](good))
        refused(read_weights, path, fragment)


def test_wrong_architecture_names_the_keys_and_shapes(workspace, tmp_path):
    five = other_weights(workspace, tmp_path / "five.safetensors", lenet(5))
    for read in (load_model, lambda p: load_trained(str(p))):
        refused(
            read,
            five,
            "do not fit the model lenet",
            "fc.weight is (5, 84) in the file but (10, 84) in the model",
            "fc.bias is (5,) in the file but (10,) in the model",
        )
    batchnorm = create_model("lenet_bn", num_classes=10, in_channels=1)
    foreign = other_weights(workspace, tmp_path / "lenet_bn.safetensors", batchnorm)
    refused(load_model, foreign, "missing keys: features.3.weight", "unexpected keys: ")
    doubled = other_weights(workspace, tmp_path / "f64.safetensors", lenet().double())
    refused(load_model, doubled, "dtype mismatches: features.0.weight is float64 in the file")

    checkpoint = tmp_path / "last.safetensors"
    save_checkpoint(checkpoint, lenet(5), state={"epoch": 1})
    model = lenet()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    refused(lambda p: load_checkpoint(p, model), checkpoint, "fc.weight is (5, 84) in the file")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the refused file changed nothing


def test_an_empty_tensor_with_an_absurd_shape_is_a_shape_mismatch(tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(header_file({"weight": tensor("F32", [0, 2**62], 0, 0)}))
    refused(lambda p: load_checkpoint(p, nn.Linear(3, 2)), path, "not a cnnlab checkpoint")
    weights, _ = read_weights(path)  # a valid file: nothing is allocated for 0 elements
    assert weights["weight"].numel() == 0


@pytest.mark.parametrize(
    ("key", "state", "fragment"),
    [
        ("rng.augment", torch.zeros(7, dtype=torch.uint8), "size 5056"),
        ("rng.augment", torch.zeros(2, 8, dtype=torch.uint8), "1-D uint8 tensor"),
        ("rng.augment", torch.zeros(5056, dtype=torch.int64), "found int64 of shape (5056,)"),
        ("rng.torch", torch.zeros(16, dtype=torch.uint8), "size 5056"),
    ],
    ids=["short", "2-D", "int64", "global-short"],
)
def test_unusable_generator_states_are_refused_before_any_restore(tmp_path, key, state, fragment):
    """Generator.set_state would raise a bare RuntimeError once training resumed."""
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, lenet(), generators={"augment": torch.Generator().get_state()})
    tensors, metadata = tensors_and_metadata(path)
    tensors[key] = state
    save_file(tensors, path, metadata=metadata)
    model = lenet(5)  # a misfit too: the generator state is refused first, nothing restored
    refused(partial(load_checkpoint, model=model), path, f"generator state {key}", fragment)
    tensors["rng.augment"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    tensors["rng.torch"] = torch.Generator().get_state()
    save_file(tensors, path, metadata=metadata)
    assert load_checkpoint(path, lenet()).generators["augment"].numel() == 16


# The readers run in a fresh process limited to 1 GiB more address space than it starts with (a
# larger allocation fails, and the test with it); each attempt's peak resident memory (VmHWM,
# reset through /proc/self/clear_refs before it) is compared with the resident memory before it.
MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from torch import nn
from cnnlab.errors import CheckpointError
from cnnlab.train.checkpoint import load_checkpoint, read_weights

def status(key):
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0]) * 1024

def start():
    Path("/proc/self/clear_refs").write_text("5")  # peak resident memory := current
    return status("VmRSS")

folder = Path(sys.argv[1])
read_weights(folder / "good.safetensors")  # warm up: what a first read loads once
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + 2**30, resource.RLIM_INFINITY))
results = {}
for path in sorted(folder.glob("*.lie")):
    for name, read in (("read_weights", read_weights),
                       ("load_checkpoint", lambda p: load_checkpoint(p, nn.Linear(3, 2)))):
        before = start()
        try:
            read(path)
            outcome = "loaded"
        except CheckpointError as error:
            outcome = "refused" if str(path) in str(error) else "unnamed: " + str(error)
        except BaseException as error:
            outcome = type(error).__name__ + ": " + str(error)
        results[f"{path.stem} {name}"] = [outcome, status("VmHWM") - before]
before = start()
control = bytearray(256 * 2**20)
for index in range(0, len(control), 4096):
    control[index] = 1
del control
results["control: 256 MiB really allocated"] = ["allocated", status("VmHWM") - before]
print(json.dumps(results))
"""


def test_lying_headers_are_refused_without_a_large_allocation(workspace, tmp_path):
    good = (workspace / "run" / "model.safetensors").read_bytes()
    (tmp_path / "good.safetensors").write_bytes(good)
    for kind, lie in LYING_HEADERS.items():
        (tmp_path / f"{kind}.lie").write_bytes(lie(good))
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    results = json.loads(probe.stdout)
    assert len(results) == 2 * len(LYING_HEADERS) + 1
    control = results.pop("control: 256 MiB really allocated")
    assert control[1] > 200 * 2**20  # the measurement sees a real allocation
    for case, (outcome, grown) in results.items():
        assert outcome == "refused", (case, outcome)
        assert grown < 16 * 2**20, (
            case,
            grown,
        )  # the largest file is 1 MiB; the lies claim up to 2**63


# ---- non-finite weights -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_before_use(workspace, tmp_path, value):
    run = workspace / "run"
    weights = with_value(run / "model.safetensors", tmp_path / "w.safetensors", "fc.weight", value)
    for name, read in reader_calls().items():
        if name != "load_checkpoint":
            refused(read, weights, "fc.weight holds NaN or infinite values (1 of 840)")
    momentum = tmp_path / "momentum.safetensors"  # a checkpoint with optimizer state tensors
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    save_checkpoint(momentum, model, optimizer)
    for good, key in (
        (run / "checkpoints" / "last.safetensors", "model.features.0.weight"),
        (momentum, "optimizer.state.0.momentum_buffer"),
    ):
        bad = with_value(good, tmp_path / "last.safetensors", key, value)
        model = lenet()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        refused(partial(load_checkpoint, model=model), bad, f"refusing to load {bad}: {key} holds")
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_finite_optimizer_state_or_average_is_never_written(tmp_path):
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, state={"epoch": 1})
    before = path.read_bytes()
    optimizer.state[model.fc.weight]["momentum_buffer"][0, 0] = float("nan")
    message = refused(lambda p: save_checkpoint(p, model, optimizer), path, "refusing to write")
    assert "momentum_buffer holds NaN" in message
    optimizer.state[model.fc.weight]["momentum_buffer"][0, 0] = 0.0
    average = lenet()
    with torch.no_grad():
        average.fc.bias[3] = float("inf")
    message = refused(
        lambda p: save_checkpoint(p, model, optimizer, extra_models={"ema": average}), path
    )
    assert "extra.ema.fc.bias holds NaN or infinite values (1 of 10)" in message
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["last.safetensors"]


# ---- the command line: real processes -----------------------------------------------------------

# (command, what the bad file is); every command gets the torch.save payload, and the damaged
# files are spread over the commands so that each command meets several of them.
CLI_CASES = [
    *[(command, "payload") for command in ("eval", "predict", "resume", "init-from")],
    ("eval", "truncated"),
    ("eval", "nan"),
    ("predict", "empty"),
    ("predict", "wrong-architecture"),
    ("resume", "random"),
    ("resume", "nan"),
    ("resume", "wrong-architecture"),
    ("init-from", "random"),
    ("init-from", "nan"),
]
EXPECTED = {
    "payload": "cnnlab never unpickles a file",
    "truncated": "file not fully covered",
    "empty": "is empty",
    "random": "it is truncated or another format",
    "nan": "holds NaN or infinite values",
    "wrong-architecture": "fc.weight is (5, 84) in the file but (10, 84) in the model",
}


def bad_file(workspace: Path, folder: Path, command: str, kind: str) -> Path:
    """The bad file for `command` (a checkpoint for resume, weights otherwise) in `folder`."""
    run = workspace / "run"
    good = run / ("checkpoints/last.safetensors" if command == "resume" else "model.safetensors")
    path = folder / good.name
    if kind == "payload":
        torch_zip_payload(path, folder / "created-by-payload")
    elif kind == "nan":
        key = "model.hidden.0.weight" if command == "resume" else "hidden.0.weight"
        with_value(good, path, key, float("nan"))
    elif kind == "wrong-architecture" and command == "resume":
        save_checkpoint(path, lenet(5), state={"epoch": 1})
    elif kind == "wrong-architecture":
        other_weights(workspace, path, lenet(5))
    else:
        damage = {"truncated": "truncated-by-1-byte", "empty": "empty", "random": "random-4KiB"}
        path.write_bytes(CORRUPT[damage[kind]](good.read_bytes()))
    return path


def cli_command(workspace: Path, folder: Path, command: str, path: Path) -> list[str]:
    data = str(workspace / "data")
    if command == "eval":
        return ["eval", str(path), "--data-dir", data, "--device", "cpu"]
    if command == "predict":
        return ["predict", str(path), str(workspace / "image.png"), "--device", "cpu"]
    if command == "resume":
        return ["train", "--resume", str(folder)]
    return [
        *("train", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir", data),
        *("--epochs", "1", "--device", "cpu", "--quiet", "--out", str(folder / "new-run")),
        *("--init-from", str(path)),
    ]


@pytest.fixture(scope="module")
def cli_outcomes(workspace) -> dict:
    """Every CLI case run as `python -m cnnlab ...`, two processes at a time."""
    cases = {}
    for command, kind in CLI_CASES:
        folder = workspace / "cli" / f"{command}-{kind}"
        if command == "resume":  # a copy of the run whose only checkpoint is the bad one
            shutil.copytree(workspace / "run", folder)
            shutil.rmtree(folder / "checkpoints")
            (folder / "checkpoints").mkdir()
            path = bad_file(workspace, folder / "checkpoints", command, kind)
        else:
            folder.mkdir(parents=True)
            path = bad_file(workspace, folder, command, kind)
        cases[(command, kind)] = (folder, path, path.read_bytes())

    def run(case):
        folder, path, _ = cases[case]
        argv = [sys.executable, "-m", "cnnlab", *cli_command(workspace, folder, case[0], path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=folder)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    return {case: (*cases[case], results[case]) for case in cases}


@pytest.mark.parametrize(("command", "kind"), CLI_CASES, ids=[f"{c}-{k}" for c, k in CLI_CASES])
def test_the_command_line_refuses_bad_files(cli_outcomes, command, kind):
    folder, path, content, result = cli_outcomes[(command, kind)]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result.stderr
    # a resume may warn about the checkpoint it could not use; nothing else is printed
    others = [line for line in lines if line not in errors]
    assert all("warning" in line.lower() for line in others) if command == "resume" else not others
    name = "train" if command in ("resume", "init-from") else command
    assert errors[0].startswith(f"cnnlab {name}: error: ")
    assert str(path) in errors[0] and EXPECTED[kind] in errors[0], errors[0]
    assert not (folder / "created-by-payload").exists()
    assert path.read_bytes() == content  # nothing rewrote the bad file
    if command == "resume":
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    if command == "init-from":
        assert not (folder / "new-run").exists()  # refused before the run folder was made


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("scheduler", lambda doc: doc["scheduler"]["state"].update(optimizer=1), "other entries"),
        ("scheduler", lambda doc: doc["scheduler"]["state"].update(last_epoch="x"), "a str for"),
        ("optimizer", lambda doc: doc["optimizer"]["param_groups"][0].update(lr="abc"), "a str"),
    ],
)
def test_hostile_optimizer_or_scheduler_state_is_refused_before_loading(
    tmp_path, section, change, message
):
    """Found by fuzzing: such states used to load and crash the first training step."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint

    def fresh():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2)

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, *fresh(), state={"epoch": 1})
    with safe_open(path, "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    document = json.loads(metadata["cnnlab.checkpoint"])
    change(document)
    save_file(tensors, path, metadata={**metadata, "cnnlab.checkpoint": json.dumps(document)})
    with pytest.raises(CheckpointError, match=message) as raised:
        load_checkpoint(path, *fresh())
    assert str(path) in str(raised.value) and section in str(raised.value)
