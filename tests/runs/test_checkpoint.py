"""Checkpoints and weights: exact resume, atomic writes, strict loads, and bad files refused."""

from __future__ import annotations

import copy
import json
import pickle
import random
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.models import create_model
from cnnlab.runs import tensorfile
from cnnlab.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnnlab.runs.weights import load_model, read_weights, save_weights


def halving(epoch: int) -> float:
    return 0.5**epoch


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet_bn", num_classes=10, in_channels=1)


def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "momentum":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))


def batches(count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(4, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (4,), generator=generator),
        )
        for _ in range(count)
    ]


def train_step(model, optimizer, scheduler, batch) -> None:
    images, labels = batch
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_resumed_step_equals_uninterrupted_step(tmp_path, kind):
    data = batches()
    model = lenet()
    optimizer = make_optimizer(kind, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, halving)
    for batch in data[:3]:
        train_step(model, optimizer, scheduler, batch)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, scheduler, state={"epoch": 3})
    saved_optimizer = copy.deepcopy(optimizer.state_dict())  # the step below works in place
    train_step(model, optimizer, scheduler, data[3])

    fresh = lenet(seed=7)
    fresh_optimizer = make_optimizer(kind, fresh)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, halving)
    load_checkpoint(path, fresh, fresh_optimizer, fresh_scheduler)
    restored = fresh_optimizer.state_dict()
    assert restored["param_groups"] == saved_optimizer["param_groups"]
    for index, entry in saved_optimizer["state"].items():
        assert_same_tensors(entry, restored["state"][index])
    if kind == "adam":
        assert restored["state"][0]["step"].item() == 3
    train_step(fresh, fresh_optimizer, fresh_scheduler, data[3])

    assert_same_tensors(model.state_dict(), fresh.state_dict())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_rng_generators_and_state_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    data_rng = torch.Generator().manual_seed(5)
    state = {
        "epoch": 2,
        "step": 40,
        "best_loss": float("inf"),
        "history": [{"train_loss": 0.5, "val_acc": 0.25}],
        "config": {"model": "mlp", "lr": 0.1, "augment": ["flip", "crop"]},
    }
    path = tmp_path / "ckpt.safetensors"
    torch.manual_seed(11)
    save_checkpoint(path, model, state=state, generators={"data": data_rng.get_state()})
    after_save = torch.rand(5)
    torch.manual_seed(99)
    result = load_checkpoint(path, nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert isinstance(result, Checkpoint)
    assert torch.equal(torch.rand(5), after_save)
    assert result.state == state
    assert result.generators.keys() == {"data"}
    assert torch.equal(result.generators["data"], data_rng.get_state())


def test_tied_weights_are_saved_and_restored(tmp_path):
    def tied() -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        model[1].weight = model[0].weight
        return model

    model = tied()
    path = tmp_path / "tied.safetensors"
    save_checkpoint(path, model)
    fresh = tied()
    load_checkpoint(path, fresh)
    assert_same_tensors(model.state_dict(), fresh.state_dict())
    assert fresh[1].weight is fresh[0].weight


def test_non_finite_weights_are_refused_and_the_previous_file_kept(tmp_path):
    model = lenet()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, state={"epoch": 1})
    before = path.read_bytes()
    with torch.no_grad():
        model.hidden[0].weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(path, model, state={"epoch": 2})
    assert str(path) in str(error.value) and "hidden.0.weight" in str(error.value)
    with pytest.raises(CheckpointError, match=r"hidden\.0\.weight"):
        save_weights(tmp_path / "model.safetensors", model, {"model": "lenet_bn"})
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["last.safetensors"]


def test_a_write_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, state={"epoch": 1})
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):  # as safetensors reports ENOSPC
        with open(filename, "wb") as file:
            file.write(b"partial")
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(tensorfile, "save_file", disk_full)
    with pytest.raises(CnnlabError) as error:
        save_checkpoint(path, model, state={"epoch": 2})
    assert str(error.value) == (
        f"could not write {path}: No space left on device; free some space or write the run "
        "elsewhere (--out); the previous file, if any, is kept"
    )
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["last.safetensors"]


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, lenet())
    other = create_model("lenet_bn", num_classes=5, in_channels=1)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, other)
    message = str(error.value)
    assert str(path) in message and "fc.weight is (10, 84) in the file but (5, 84)" in message
    assert "fc.bias is (10,) in the file but (5,)" in message

    save_checkpoint(path, nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    message = str(error.value)
    assert "missing keys: 2.weight, 2.bias" in message
    assert "unexpected keys: 1.bias, 1.weight" in message


def test_missing_optimizer_or_other_optimizer_is_refused(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    save_checkpoint(path, model, torch.optim.Adam(model.parameters()))
    with pytest.raises(CheckpointError, match="Adam optimizer, not of SGD"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))


def write_bytes(tmp_path, data: bytes):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    return path


def valid_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, nn.Linear(3, 2), state={"epoch": 1})
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[:5], "fewer than its 8-byte header"),
        (lambda data: data[:-3], "not a valid safetensors file"),
        (lambda data: data[:200], "header claims"),
        (lambda data: random.Random(0).randbytes(4096), "header claims"),
        (lambda data: struct.pack("<Q", len(data) + 10) + data[8:], "header claims"),
        (lambda data: struct.pack("<Q", 2**40) + data[8:], "header claims"),
        (lambda data: data[:8] + b"[" * (len(data) - 8), "not a valid safetensors file"),
    ],
    ids=["empty", "short", "truncated-data", "truncated-header", "random", "lying", "huge", "junk"],
)
def test_damaged_files_are_refused_clearly(tmp_path, damage, expected):
    path = write_bytes(tmp_path, damage(valid_bytes(tmp_path)))
    for read in (lambda: load_checkpoint(path, nn.Linear(3, 2)), lambda: read_weights(path)):
        with pytest.raises(CheckpointError, match=expected) as error:
            read()
        assert str(path) in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as error:
        load_checkpoint(tmp_path / "nowhere.safetensors", nn.Linear(3, 2))
    assert "nowhere.safetensors" in str(error.value)


def test_offsets_that_lie_are_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}})
    path = write_bytes(tmp_path, struct.pack("<Q", len(header)) + header.encode() + bytes(16))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_weights(path)


def test_pickle_files_are_refused_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2, 3)}, path)

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path, nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_model(path)


def test_foreign_safetensors_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a cnnlab checkpoint"):
        load_checkpoint(path, nn.Linear(3, 2))
    weights, metadata = read_weights(path)
    assert metadata == {} and set(weights) == {"weight", "bias"}


METADATA = {
    "model": "lenet_bn",
    "num_classes": 10,
    "in_channels": 1,
    "options": {},
    "classes": [f"class {index}" for index in range(10)],
    "input_size": [1, 28, 28],
    "mean": [0.286],
    "std": [0.353],
}


def test_weights_round_trip_and_load_model(tmp_path):
    model = lenet()
    train_step(model, make_optimizer("momentum", model), None, batches(1)[0])  # moves BN stats
    path = tmp_path / "model.safetensors"
    save_weights(path, model, METADATA)
    weights, metadata = read_weights(path)
    assert metadata == METADATA
    assert_same_tensors(weights, model.state_dict())

    loaded, metadata = load_model(path)
    assert metadata == METADATA and not loaded.training
    images = batches(1)[0][0]
    assert torch.equal(loaded(images), model.eval()(images))


def test_load_model_passes_build_options(tmp_path):
    options = {"growth_rate": 4, "convs_per_block": 1}
    model = create_model("densenet_d2l", num_classes=3, in_channels=1, **options)
    path = tmp_path / "model.safetensors"
    save_weights(
        path,
        model,
        {"model": "densenet_d2l", "num_classes": 3, "in_channels": 1, "options": options},
    )
    loaded, _ = load_model(path)
    assert_same_tensors(loaded.state_dict(), model.state_dict())


def test_load_model_names_missing_metadata(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(path, lenet(), {"model": "lenet_bn", "num_classes": 10})
    with pytest.raises(CheckpointError, match="no 'in_channels'"):
        load_model(path)
    save_weights(path, lenet(), {"model": "no_such_net", "num_classes": 10, "in_channels": 1})
    with pytest.raises(CheckpointError, match="no_such_net"):
        load_model(path)
    save_weights(path, lenet(), {**METADATA, "num_classes": 5})
    with pytest.raises(CheckpointError, match=r"fc.weight is \(10, 84\) in the file but \(5, 84\)"):
        load_model(path)


def test_checkpoint_and_weights_are_not_confused(tmp_path):
    checkpoint_path = tmp_path / "last.safetensors"
    weights_path = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint_path, lenet())
    save_weights(weights_path, lenet(), METADATA)
    with pytest.raises(CheckpointError, match="is a training checkpoint"):
        read_weights(checkpoint_path)
    with pytest.raises(CheckpointError, match="holds final weights"):
        load_checkpoint(weights_path, lenet())


def test_unserialisable_state_is_refused_before_writing(tmp_path):
    path = tmp_path / "last.safetensors"
    with pytest.raises(CheckpointError, match="state is not JSON-serialisable"):
        save_checkpoint(path, nn.Linear(3, 2), state={"when": object()})
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loading_maps_tensors_to_the_model_device(tmp_path):
    model = lenet().cuda()
    optimizer = make_optimizer("adam", model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, halving)
    images, labels = batches(1)[0]
    train_step(model, optimizer, scheduler, (images.cuda(), labels.cuda()))
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, scheduler)
    fresh = lenet(seed=3).cuda()
    fresh_optimizer = make_optimizer("adam", fresh)
    load_checkpoint(path, fresh, fresh_optimizer)
    assert_same_tensors(model.state_dict(), fresh.state_dict())
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].is_cuda
