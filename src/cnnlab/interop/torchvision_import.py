"""`cnnlab import-weights`: a torchvision state-dict file read safely, converted, and written as
a cnnlab weights file that `cnnlab eval`, `predict` and `train --init-from` take.

`.pth` files are read with `torch.load(weights_only=True)` only, so a file that needs more than
tensors is refused, never unpickled. The weights file's metadata holds the model's build options
(e.g. `torchvision_compat`), the class names, and how inputs are prepared: torchvision evaluates
a 224 centre crop of a 256 resize, cnnlab resizes the whole image to 224 (299 for Inception-v3),
so accuracies come out a little lower than torchvision's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.errors import CnnlabError
from cnnlab.interop.torchvision_names import family_for
from cnnlab.interop.torchvision_weights import (
    ConvertedWeights,
    check_state_dict,
    convert_torchvision_state_dict,
)
from cnnlab.runs.weights import read_weights, save_weights
from cnnlab.version import __version__


def read_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, or of a torch.save file (`.pth`, `.pt`...) loaded
    with weights_only=True: a file that needs more than tensors and containers is refused,
    never unpickled."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing (no such file)"
        raise CnnlabError(f"{path}: expected a .pth or .safetensors state dict, found {found}")
    if path.suffix == ".safetensors":
        return read_weights(path)[0]
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load reports damage in many ways (KeyError, EOFError...)
        raise CnnlabError(f"{path}: {_load_failure(error)}") from None
    check_state_dict(loaded)
    return dict(loaded)


def _load_failure(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    blocked = next((line for line in lines if "GLOBAL" in line), None)  # weights_only's refusal
    if blocked:
        return (
            f"holds Python objects besides tensors, which loading would run code for ({blocked}); "
            "cnnlab loads only plain state dicts (torch.load with weights_only=True)"
        )
    detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
    return f"not a readable torch.save file ({type(error).__name__}: {detail})"


def import_torchvision_weights(
    source: str | Path,
    model_name: str,
    out: str | Path,
    classes: list[str] | None = None,
    accept_differences: bool = False,
) -> tuple[ConvertedWeights, dict]:
    """Convert the torchvision state dict in `source` into the cnnlab weights file `out`, with
    the metadata `cnnlab eval`, `predict` and `train --init-from` need (the build options
    among it, so that the file rebuilds the same network); `classes` names the classes
    (default: their indices). `accept_differences`: see `convert_torchvision_state_dict`.
    Returns the conversion and the metadata written."""
    family = family_for(model_name)
    tensors = read_state_dict_file(source)
    converted = convert_torchvision_state_dict(model_name, tensors, accept_differences)
    count = converted.num_classes
    classes = [str(index) for index in range(count)] if classes is None else list(classes)
    if len(classes) != count:
        raise CnnlabError(
            f"{len(classes)} class names given, but the weights in {source} have {count} classes"
        )
    size = family.image_size
    metadata = {
        "model": model_name,
        "options": converted.options,
        "num_classes": count,
        "in_channels": 3,
        "classes": classes,
        "dataset": "imagenet" if count == 1000 else "unknown",
        "image_size": [3, size, size],
        "input_size": size,
        "mean": list(family.mean),
        "std": list(family.std),
        "cnnlab_version": __version__,
        "imported_from": {"layout": "torchvision", "file": Path(source).name},
    }
    if converted.difference:
        metadata["imported_from"]["difference"] = converted.difference
    save_weights(out, converted.build(), metadata)
    return converted, metadata
