"""Training checkpoints as safetensors files: nothing is pickled, nothing unpickled.

A checkpoint is one file that lets a run continue exactly where it stopped:

- tensors: the model's state_dict under ``model.<key>``, the optimizer's per-parameter state
  tensors under ``optimizer.state.<param index>.<name>`` (Adam's ``step`` included), torch's
  global RNG state under ``rng.torch``, on a machine with CUDA each GPU's under
  ``rng.cuda.<index>``, and the caller's extra generator states under ``rng.<name>``;
- the string metadata entry ``cnnlab.checkpoint``: a JSON document with the format version,
  the optimizer's param_groups and non-tensor per-parameter values, the scheduler's
  state_dict and the caller's ``state`` (epoch, step, best metric, history, config...).

Final weights (a bare state_dict with the model's description) are weights.py's.

A checkpoint is written atomically and refused while a weight (or an optimizer state tensor) is
NaN or infinite, so a diverged run never replaces a good file; reading refuses such a file too,
before anything is restored, so training or inference never starts from it. The files
themselves are written and read by tensorfile.py: with a checksum of the tensors, and a header
check before safetensors sees a file (safetensors then checks every tensor's dtype, shape and
offsets against the bytes there, so no lying header makes it allocate more than the file
holds), so an empty, truncated, damaged, foreign or hostile file ends in one `CheckpointError`
naming the file and what is wrong with it. A torch.save/pickle file is recognised and refused:
nothing here ever unpickles, and there is no fallback that would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CheckpointError
from cnnlab.runs.tensorfile import read_tensor_file, write_tensor_file
from cnnlab.runs.weights import (
    CHECKPOINT_KEY,
    KEPT,
    NOT_LOADED,
    WEIGHTS_KEY,
    decode_json,
    dtype_name,
    encode_json,
    load_weights_into,
    refuse_non_finite,
    standalone,
    weight_tensors,
)

FORMAT_VERSION = 1
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer.state."
RNG_PREFIX = "rng."
EXTRA_PREFIX = "extra."  # extra models, e.g. the weight average: "extra.<name>.<key>"
TORCH_RNG = "rng.torch"
CUDA_RNG_PREFIX = "rng.cuda."  # one per GPU: "rng.cuda.0", ...
_PARTS = {"optimizer": "the optimizer state", "scheduler": "the scheduler state", "state": "state"}


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns besides restoring the objects passed to it."""

    state: dict
    generators: dict[str, torch.Tensor]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: dict | None = None,
    generators: dict[str, torch.Tensor] | None = None,
    extra_models: dict[str, nn.Module] | None = None,
    keep_previous: str | os.PathLike | None = None,
) -> None:
    """Write everything needed to resume training to one safetensors file, atomically.
    `extra_models` are more models to keep (the trainer's weight average), by name; with
    `keep_previous`, the file `path` held becomes that file just before it is replaced."""
    path = Path(path)
    tensors = weight_tensors(model, path, prefix=MODEL_PREFIX)
    for name, extra in (extra_models or {}).items():
        tensors.update(weight_tensors(extra, path, prefix=f"{EXTRA_PREFIX}{name}."))
    document = {"format": FORMAT_VERSION, "optimizer": None, "scheduler": None}
    if optimizer is not None:
        optimizer_tensors, document["optimizer"] = _split_optimizer(optimizer)
        refuse_non_finite(optimizer_tensors, f"refusing to write {path}", KEPT)
        tensors.update(optimizer_tensors)
    if scheduler is not None:
        document["scheduler"] = {
            "type": type(scheduler).__name__,
            "state": scheduler.state_dict(),
        }
    document["state"] = {} if state is None else state
    tensors[TORCH_RNG] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            tensors[f"{CUDA_RNG_PREFIX}{index}"] = torch.cuda.get_rng_state(index)
    tensors.update(_generator_tensors(generators or {}, path))
    for part, label in _PARTS.items():  # encoded one by one to name the part that fails
        encode_json(document[part], label, path)
    write_tensor_file(path, tensors, CHECKPOINT_KEY, document, keep_previous)


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_models: dict[str, nn.Module] | None = None,
    check_state: Callable[[dict], None] | None = None,
) -> Checkpoint:
    """Restore the model, optimizer, scheduler, extra models and torch's global RNG from a
    checkpoint. `check_state(state)` sees the saved state first and may refuse the file by
    raising (the trainer refuses a checkpoint of another run) before anything is restored."""
    path = Path(path)
    tensors, metadata = read_tensor_file(path)
    document = _checkpoint_document(path, metadata)
    if TORCH_RNG not in tensors:
        raise CheckpointError(f"{path} is incomplete: it has no {TORCH_RNG!r} tensor")
    refuse_non_finite(tensors, f"refusing to load {path}", NOT_LOADED)  # before any restore
    generators = {
        key[len(RNG_PREFIX) :]: value
        for key, value in tensors.items()
        if key.startswith(RNG_PREFIX) and key != TORCH_RNG and not key.startswith(CUDA_RNG_PREFIX)
    }
    cuda_states = {k: v for k, v in tensors.items() if k.startswith(CUDA_RNG_PREFIX)}
    _check_generator_state(TORCH_RNG, tensors[TORCH_RNG], path, cpu_only=True)
    for name, value in generators.items():
        _check_generator_state(RNG_PREFIX + name, value, path)
    for key, value in cuda_states.items():
        _check_generator_state(key, value, path)
    if check_state is not None:
        check_state(document["state"])
    weights = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in tensors.items()
        if key.startswith(MODEL_PREFIX)
    }
    load_weights_into(model, weights, path)
    for name, extra in (extra_models or {}).items():
        prefix = f"{EXTRA_PREFIX}{name}."
        found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not found:
            raise CheckpointError(f"{path} holds no {name!r} model to restore")
        load_weights_into(extra, found, path)
    if optimizer is not None:
        _restore_optimizer(optimizer, document["optimizer"], tensors, path)
    if scheduler is not None:
        _restore_scheduler(scheduler, document["scheduler"], path)
    torch.set_rng_state(tensors[TORCH_RNG])  # checked above
    _restore_cuda_rng(cuda_states)
    return Checkpoint(state=document["state"], generators=generators)


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-parameter tensors for the file's tensors, everything else for the JSON document."""
    saved = optimizer.state_dict()
    tensors, values = {}, {}
    for index, entry in saved["state"].items():
        values[str(index)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = standalone(value)
            else:
                values[str(index)][name] = value
    document = {
        "type": type(optimizer).__name__,
        "param_groups": saved["param_groups"],
        "state": values,
    }
    return tensors, document


def _generator_tensors(generators: dict[str, torch.Tensor], path: Path) -> dict:
    tensors = {}
    for name, value in generators.items():
        if not name or RNG_PREFIX + name == TORCH_RNG:
            raise CheckpointError(
                f"cannot write {path}: generator name {name!r} is empty or reserved for "
                "torch's global RNG"
            )
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            raise CheckpointError(
                f"cannot write {path}: generator {name!r} should be a uint8 state tensor "
                "(Generator.get_state()), found "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
        tensors[RNG_PREFIX + name] = standalone(value)
    return tensors


_CUDA_GENERATOR_STATE_BYTES = 16  # a CUDA (Philox) generator's state: its seed and offset


def _check_generator_state(key: str, state: torch.Tensor, path: Path, cpu_only=False) -> None:
    """Refuse a generator state that Generator.set_state would reject with a RuntimeError when
    training resumes. A CPU state is tried on a scratch generator; a CUDA state (saved by a run
    on a GPU) can only be checked for its size here."""
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise CheckpointError(
            f"{path}: the generator state {key} should be a 1-D uint8 tensor, found "
            f"{dtype_name(state)} of shape {tuple(state.shape)}"
        )
    if not cpu_only and state.numel() == _CUDA_GENERATOR_STATE_BYTES:
        return
    try:
        torch.Generator().set_state(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: the generator state {key} is unusable ({error})".replace("\n", " ")
        ) from None


def _restore_cuda_rng(states: dict[str, torch.Tensor]) -> None:
    """Give each GPU its saved generator state, where this machine has that GPU (a run saved
    on GPUs may resume on a CPU, where they do not matter)."""
    if not torch.cuda.is_available():
        return
    for key, state in states.items():
        index = int(key[len(CUDA_RNG_PREFIX) :]) if key[len(CUDA_RNG_PREFIX) :].isdigit() else -1
        if 0 <= index < torch.cuda.device_count():
            torch.cuda.set_rng_state(state, index)


def _checkpoint_document(path: Path, metadata: dict[str, str]) -> dict:
    if CHECKPOINT_KEY not in metadata:
        hint = "; it holds final weights (see load_model)" if WEIGHTS_KEY in metadata else ""
        raise CheckpointError(
            f"{path} is not a cnnlab checkpoint: its metadata has no {CHECKPOINT_KEY!r} entry{hint}"
        )
    document = decode_json(metadata[CHECKPOINT_KEY], CHECKPOINT_KEY, path)
    version = document.get("format") if isinstance(document, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this cnnlab reads format {FORMAT_VERSION}"
        )
    missing = [key for key in ("optimizer", "scheduler", "state") if key not in document]
    if missing:
        raise CheckpointError(f"{path} is incomplete: its metadata has no {', '.join(missing)}")
    return document


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict | None, tensors: dict, path: Path
) -> None:
    kind = type(optimizer).__name__
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no optimizer state to restore into {kind}")
    if saved.get("type") != kind:
        raise CheckpointError(
            f"{path} holds the state of a {saved.get('type')} optimizer, not of {kind}"
        )
    try:
        state = {int(index): dict(values) for index, values in saved["state"].items()}
        for key, tensor in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                index, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
                state.setdefault(int(index), {})[name] = tensor
        groups = saved["param_groups"]
        # strict=False: load_state_dict below names a different number of groups
        for group, live in zip(groups, optimizer.param_groups, strict=False):
            settings = {key: value for key, value in group.items() if key != "params"}
            live_settings = {key: value for key, value in live.items() if key != "params"}
            _check_kinds(settings, live_settings, "optimizer's param group", path)
            _restore_tuples(group, live)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(
            f"the optimizer state in {path} does not fit this {kind}: {error}"
        ) from None


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return "list" if isinstance(value, (list, tuple)) else type(value).__name__


def _check_kinds(saved: Any, live: dict, what: str, path: Path) -> None:
    """The saved settings have the live object's keys, each with the same kind of value
    (JSON turns tuples into lists; a value unset (None) in a fresh object may be anything):
    a hostile or foreign state would otherwise load and fail at the first step."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"the {what} in {path} is a {_kind(saved)}, expected a mapping")
    if set(saved) != set(live):
        odd = sorted(set(saved) ^ set(live))
        raise CheckpointError(f"the {what} in {path} has other entries than expected: {odd}")
    for key, value in live.items():
        if value is not None and _kind(saved[key]) != _kind(value):
            raise CheckpointError(
                f"the {what} in {path} holds a {_kind(saved[key])} for {key!r}, "
                f"expected a {_kind(value)}"
            )


def _restore_tuples(saved_group: dict, live_group: dict) -> None:
    # JSON has no tuples: give back the live optimizer's tuples (Adam's betas) so that the
    # restored state_dict equals the one that was saved
    for key, value in saved_group.items():
        if isinstance(live_group.get(key), tuple) and isinstance(value, list):
            saved_group[key] = tuple(value)


def _restore_scheduler(scheduler: Any, saved: dict | None, path: Path) -> None:
    kind = type(scheduler).__name__
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no scheduler state to restore into {kind}")
    if saved.get("type") != kind:
        raise CheckpointError(f"{path} holds the state of a {saved.get('type')}, not of {kind}")
    try:
        _check_kinds(saved["state"], scheduler.state_dict(), "scheduler's state", path)
        scheduler.load_state_dict(saved["state"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"the scheduler state in {path} does not fit this {kind}: {error}"
        ) from None
