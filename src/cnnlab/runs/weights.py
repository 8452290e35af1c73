"""Final weights as safetensors files: a bare state_dict and a description of the model.

A weights file (a run's ``model.safetensors``, or what `cnnlab import-weights` and `cnnlab
export --format safetensors` write) holds the model's state_dict, with the writer's description
of the model (name, build options, classes, input size, mean and std...) JSON-encoded under the
metadata entry ``cnnlab``. `load_model` rebuilds the network from that description, checks it
against the tensors first (on the meta device, so no description makes cnnlab allocate beyond
what the file holds) and returns it in eval mode.

Weights are refused on writing and on reading while a tensor is NaN or infinite, so a diverged
run never replaces a good file and nothing starts from one. The bytes themselves are written
and read by tensorfile.py (checksum, header check, atomic replacement); checkpoint.py builds the
resumable training checkpoint on the helpers here. Nothing is ever pickled or unpickled.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.tensorfile import CHECKSUM_FIELD, read_tensor_file, write_tensor_file

CHECKPOINT_KEY = "cnnlab.checkpoint"
WEIGHTS_KEY = "cnnlab"
REQUIRED_MODEL_KEYS = ("model", "num_classes", "in_channels")
FINAL_WEIGHTS = "model.safetensors"  # a run folder's final weights


def weights_path(run_or_weights: str | os.PathLike) -> Path:
    """A run folder's final weights, or the weights file itself."""
    path = Path(run_or_weights)
    return path / FINAL_WEIGHTS if path.is_dir() else path


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict) -> None:
    """Write the final weights with `metadata` (JSON) under the metadata entry "cnnlab"."""
    path = Path(path)
    tensors = weight_tensors(model, path)
    encode_json(metadata, "the metadata", path)
    write_tensor_file(path, tensors, WEIGHTS_KEY, metadata)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The state_dict of a weights file and its decoded "cnnlab" metadata ({} when absent)."""
    path = Path(path)
    tensors, metadata = read_tensor_file(path)
    if CHECKPOINT_KEY in metadata:
        raise CheckpointError(
            f"{path} is a training checkpoint, not a weights file; "
            "use the run's model.safetensors or load_checkpoint"
        )
    refuse_non_finite(tensors, f"refusing to load {path}", NOT_LOADED)
    if WEIGHTS_KEY not in metadata:
        return tensors, {}
    description = decode_json(metadata[WEIGHTS_KEY], WEIGHTS_KEY, path)
    if not isinstance(description, dict):
        raise CheckpointError(
            f"{path}: metadata {WEIGHTS_KEY!r} should be a JSON object, "
            f"found {type(description).__name__}"
        )
    description.pop(CHECKSUM_FIELD, None)  # checked by read_tensor_file
    return tensors, description


def load_model(run_or_weights: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The model of a run folder (its model.safetensors) or of a weights file, in eval mode,
    and the metadata stored with it: the model's name, build options, num_classes and
    in_channels, and for a training run's weights also its classes, dataset, image_size,
    input_size, mean and std."""
    path = weights_path(run_or_weights)
    if path != Path(run_or_weights) and not path.exists():
        raise CheckpointError(
            f"{run_or_weights} has no {FINAL_WEIGHTS}: the run has not finished (resume it with "
            f"cnnlab train --resume {run_or_weights}) or the folder is not a run folder"
        )
    weights, metadata = read_weights(path)
    missing = [key for key in REQUIRED_MODEL_KEYS if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{path} does not say how to build its model: its {WEIGHTS_KEY!r} metadata has no "
            f"{', '.join(repr(key) for key in missing)}"
        )
    options = metadata.get("options", {})
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: metadata 'options' should be an object, found {options!r}")
    name, num_classes, in_channels = (metadata[key] for key in REQUIRED_MODEL_KEYS)
    if not isinstance(name, str) or any(type(n) is not int for n in (num_classes, in_channels)):
        raise CheckpointError(
            f"{path}: its {WEIGHTS_KEY!r} metadata should name the model and give num_classes and "
            f"in_channels as integers, found model={name!r}, num_classes={num_classes!r}, "
            f"in_channels={in_channels!r}"
        )
    # The description comes from the file: build it on the meta device first (no memory), with no
    # more tensors than the file holds, and check it against the weights before building for real,
    # so that no description makes cnnlab allocate (or loop) beyond what the file holds.
    described = (path, name, num_classes, in_channels, options, len(weights))
    with torch.device("meta"):
        load_weights_into(_build_described(*described), weights, path, check_only=True)
    model = _build_described(*described)
    load_weights_into(model, weights, path)
    return model.eval(), metadata


def _build_described(path, name, num_classes, in_channels, options, tensors: int) -> nn.Module:
    """create_model from a file's description, stopped once the model registers more tensors or
    modules than a model with `tensors` weight tensors can have (a hostile depth or width)."""
    limits, made = {"tensors": 2 * tensors + 16, "modules": 4 * tensors + 64}, Counter()

    def counting(kind: str):
        def hook(*_):
            made[kind] += 1
            if made[kind] > limits[kind]:
                raise CheckpointError(
                    f"it would have over {limits[kind]} {kind}, for the {tensors} tensors it holds"
                )

        return hook

    hooks = torch.nn.modules.module
    handles = [
        hooks.register_module_parameter_registration_hook(counting("tensors")),
        hooks.register_module_buffer_registration_hook(counting("tensors")),
        hooks.register_module_module_registration_hook(counting("modules")),
    ]
    try:
        return create_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    except (CnnlabError, TypeError, ValueError, RuntimeError, OverflowError) as error:
        # builders meet options from a file here: any refusal of theirs is the file's fault
        raise CheckpointError(f"{path} describes a model cnnlab cannot build: {error}") from None
    finally:
        for handle in handles:
            handle.remove()


def weight_tensors(model: nn.Module, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state_dict as standalone CPU tensors; refuses NaN or infinite weights."""
    tensors = {prefix + key: value for key, value in model.state_dict().items()}
    refuse_non_finite(tensors, f"refusing to write {path}", KEPT)
    return {key: standalone(value) for key, value in tensors.items()}


KEPT = "the previous file, if any, is kept"
NOT_LOADED = "nothing was loaded from it; use an earlier checkpoint or the weights of a good run"


def refuse_non_finite(tensors: dict[str, torch.Tensor], action: str, consequence: str) -> None:
    """One error naming the first tensor that holds NaN or infinite values."""
    for key, value in tensors.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        finite = torch.isfinite(value)
        if not finite.all():
            bad = int(finite.numel() - finite.sum())
            raise CheckpointError(
                f"{action}: {key} holds NaN or infinite values ({bad} of {value.numel()}); "
                f"{consequence}"
            )


def standalone(tensor: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors that share memory (tied weights) or are not contiguous, so
    # every key gets its own contiguous copy
    return tensor.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)


def encode_json(value: Any, what: str, path: Path) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"cannot write {path}: {what} is not JSON-serialisable ({error})"
        ) from None


def decode_json(text: str, key: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({error})") from None


def load_weights_into(
    model: nn.Module, found: dict[str, torch.Tensor], path: Path, check_only: bool = False
) -> None:
    """Strict load that lists every missing, unexpected and misshapen key in one error."""
    expected = model.state_dict()
    mismatched = [
        f"{key} is {tuple(found[key].shape)} in the file but {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if key in found and found[key].shape != value.shape
    ]
    # load_state_dict would convert silently (float64 to float32, float to int...)
    retyped = [
        f"{key} is {dtype_name(found[key])} in the file but {dtype_name(value)} in the model"
        for key, value in expected.items()
        if key in found and found[key].dtype != value.dtype
    ]
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", [key for key in expected if key not in found]),
            ("unexpected keys", sorted(key for key in found if key not in expected)),
            ("shape mismatches", mismatched),
            ("dtype mismatches", retyped),
        )
        if keys
    ]
    if problems:
        name = getattr(model, "name", type(model).__name__)
        raise CheckpointError(
            f"the weights in {path} do not fit the model {name}: {'; '.join(problems)}"
        )
    if not check_only:
        model.load_state_dict(found)


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
