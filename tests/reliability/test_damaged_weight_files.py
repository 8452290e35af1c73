"""Damaged, lying, non-finite and wrong-architecture weight and checkpoint files are refused, in
this process, with one CheckpointError naming the file (and the keys, shapes or dtypes that do
not fit), the model left unchanged, and without a large allocation.

The bad files are real files on disk made from a real run's (see weight_file_inputs.py), given
to every in-process reader: load_checkpoint, read_weights, load_model, load_trained (behind eval
and predict) and build_model (behind --init-from). A checkpoint with non-finite weights,
optimizer state or weight average is never written either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from weight_file_inputs import (
    CORRUPT,
    LYING_HEADERS,
    header_file,
    lenet,
    other_weights,
    reader_calls,
    refused,
    resealed,
    tensor,
    tensors_and_metadata,
    with_value,
)

from cnnlab.errors import CheckpointError
from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.runs.trained import load_trained
from cnnlab.runs.weights import load_model, read_weights

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
    save_file(tensors, path, metadata=resealed(tensors, metadata))
    model = lenet(5)  # a misfit too: the generator state is refused first, nothing restored
    refused(partial(load_checkpoint, model=model), path, f"generator state {key}", fragment)
    tensors["rng.augment"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    tensors["rng.torch"] = torch.Generator().get_state()
    save_file(tensors, path, metadata=resealed(tensors, metadata))
    assert load_checkpoint(path, lenet()).generators["augment"].numel() == 16


# The readers run in a fresh process limited to 1 GiB more address space than it starts with (a
# larger allocation fails, and the test with it); each attempt's peak resident memory (VmHWM,
# reset through /proc/self/clear_refs before it) is compared with the resident memory before it.
MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from torch import nn
from cnnlab.errors import CheckpointError
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.runs.weights import read_weights

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
        # the largest file is 1 MiB; the lies claim up to 2**63
        assert grown < 16 * 2**20, (case, grown)


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

    def fresh():
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2)

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, *fresh(), state={"epoch": 1})
    tensors, metadata = tensors_and_metadata(path)
    document = json.loads(metadata["cnnlab.checkpoint"])
    change(document)
    save_file(tensors, path, metadata={**metadata, "cnnlab.checkpoint": json.dumps(document)})
    with pytest.raises(CheckpointError, match=message) as raised:
        load_checkpoint(path, *fresh())
    assert str(path) in str(raised.value) and section in str(raised.value)
