"""Pretrained weights in torchvision's layout, renamed for cnnlab's models.

Where cnnlab's network computes what torchvision's does, only the tensor names differ:
`convert_torchvision_state_dict` renames every tensor by per-family rules over module paths and
checks the result against the cnnlab model built on the meta device (every torchvision tensor
used once, every cnnlab tensor filled, shapes equal); anything else is one `CnnlabError` listing
the unmatched keys, the unfilled ones and the shape mismatches, and the models the tensors
would fit. `load_torchvision_state_dict` gives the loaded model, `import_torchvision_weights`
(`cnnlab import-weights`) a weights file for `cnnlab eval`, `predict` and `train --init-from`.

- `num_batches_tracked`, absent from torchvision's older files, only matters for BatchNorm
  without momentum: a missing one is set to 0. The class count is the file's classifier's.
- DenseNet files name dense-layer tensors `norm.1` ... `conv.2` (the old spelling, in the files
  torchvision downloads) or `norm1` ... `conv2`: both are read.
- GoogLeNet and Inception-v3 map fully by name and shape, but the networks differ (see
  `DIFFERENCES`): refused unless the differences are accepted (e.g. to fine-tune). Their
  pretrained files expect inputs scaled to [-1, 1] (torchvision's `transform_input`), which the
  written metadata's mean and std give.
- torchvision evaluates a 224 centre crop of a 256 resize; cnnlab resizes the whole image to
  224 (299 for Inception-v3), so accuracies come out a little lower than torchvision's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.checkpoint import read_weights, save_weights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's `transform_input` turns ImageNet-normalised inputs into (x - 0.5) / 0.5.
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
BATCH_COUNTER = "num_batches_tracked"
LISTED = 12  # keys shown per kind of problem in an error

Rename = Callable[[str], "str | None"]  # torchvision module path -> cnnlab module path


@dataclass(frozen=True)
class Family:
    """How one torchvision family's names become cnnlab's, and how its inputs are fed."""

    rename: Rename
    classifier: str  # cnnlab module path of the final linear layer
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    aux_prefix: str | None = None  # torchvision's auxiliary heads: cnnlab's aux_logits option


@dataclass
class ConvertedWeights:
    """A torchvision state dict renamed for the cnnlab model `model` built with `options`."""

    model: str
    num_classes: int
    options: dict
    state_dict: dict[str, torch.Tensor]
    counters_set: int  # num_batches_tracked buffers absent from the file, set to 0
    difference: str | None = None  # how cnnlab's network differs from torchvision's

    def build(self) -> nn.Module:
        """The cnnlab model holding these weights, in eval mode."""
        with torch.device("meta"):  # no initialisation: every tensor is assigned below
            model = create_model(self.model, num_classes=self.num_classes, **self.options)
        model.load_state_dict(self.state_dict, assign=True)
        return model.eval()


# ---- renaming rules: torchvision module path -> cnnlab module path (None: no counterpart) -------


def _classic(classifier: dict[str, str]) -> Rename:
    """AlexNet and VGG: the same `features` indices; the classifier's linear layers move."""

    def rename(path: str) -> str | None:
        return path if re.fullmatch(r"features\.\d+", path) else classifier.get(path)

    return rename


def _resnet(path: str) -> str | None:
    fixed = {"conv1": "stem.0.0", "bn1": "stem.0.1", "fc": "head.fc"}
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)", path)
    if match is None:
        return fixed.get(path)
    block = f"stages.{int(match[1]) - 1}.{match[2]}"
    if match[3] == "downsample.":
        return f"{block}.shortcut.{match[4]}"
    return f"{block}.branch.{int(match[4]) - 1}.{0 if match[3] == 'conv' else 1}"


# A dense layer is BN-ReLU-conv1x1-BN-ReLU-conv3x3: (kind, number) -> index in cnnlab's layer.
_DENSE_LAYER = {("norm", "1"): 0, ("conv", "1"): 2, ("norm", "2"): 3, ("conv", "2"): 5}


def _densenet(path: str) -> str | None:
    fixed = {
        "features.conv0": "stem.0",
        "features.norm0": "stem.1",
        "features.norm5": "final_act.0",
        "classifier": "head.fc",
    }
    # `norm.1` is the old checkpoints' spelling of `norm1`
    layer = re.fullmatch(r"features\.denseblock(\d)\.denselayer(\d+)\.(norm|conv)\.?([12])", path)
    if layer:
        index = _DENSE_LAYER[layer[3], layer[4]]
        return f"stages.{2 * int(layer[1]) - 2}.layers.{int(layer[2]) - 1}.{index}"
    transition = re.fullmatch(r"features\.transition(\d)\.(norm|conv)", path)
    if transition:
        return f"stages.{2 * int(transition[1]) - 1}.{0 if transition[2] == 'norm' else 2}"
    return fixed.get(path)


def _basic_conv(rename_block: Rename) -> Rename:
    """torchvision's BasicConv2d (`<block>.conv`, `<block>.bn`) is cnnlab's ConvNormAct
    (`<block>.0`, `<block>.1`); other paths (the linear layers) go to `rename_block` whole."""

    def rename(path: str) -> str | None:
        block, _, part = path.rpartition(".")
        if part not in ("conv", "bn"):
            return rename_block(path)
        new = rename_block(block)
        return None if new is None else f"{new}.{0 if part == 'conv' else 1}"

    return rename


_GOOGLENET_BRANCHES = {"1": "branch1x1", "2": "branch3x3", "3": "branch_large", "4": "branch_pool"}


def _googlenet_block(path: str) -> str | None:
    if path in ("conv1", "conv2", "conv3"):
        return f"features.{path}"
    inception = re.fullmatch(r"(inception\d[a-e])\.branch(1|[23]\.[01]|4\.1)", path)
    if inception:
        branch, dot, index = inception[2].partition(".")
        return f"features.{inception[1]}.{_GOOGLENET_BRANCHES[branch]}{dot}{index}"
    aux = re.fullmatch(r"aux([12])\.(conv|fc1|fc2)", path)
    if aux:
        return f"aux.aux{aux[1]}.{aux[2]}"
    return "head.fc" if path == "fc" else None


# Inside each Inception-v3 module type, torchvision's conv names are `<chain>_<n>` (n-th conv of
# a branch) or single convs; `<chain>_<n>a/b` are the parallel 1x3 and 3x1 convs that end a
# branch. chain -> branch index, single conv -> cnnlab path under `branches`.
_POOL_PROJECTION = {"branch_pool": "3.1"}  # branch 3 starts with the average pool
_V3_BRANCHES: dict[str, dict[str, int | str]] = {
    "A": {"branch1x1": "0", "branch5x5": 1, "branch3x3dbl": 2, **_POOL_PROJECTION},
    "B": {"branch3x3": "0", "branch3x3dbl": 1},
    "C": {"branch1x1": "0", "branch7x7": 1, "branch7x7dbl": 2, **_POOL_PROJECTION},
    "D": {"branch3x3": 0, "branch7x7x3": 1},
    "E": {"branch1x1": "0", "branch3x3": 1, "branch3x3dbl": 2, **_POOL_PROJECTION},
}
# torchvision's module -> (cnnlab module path, module type)
_V3_MIXED = {
    "Mixed_5b": ("stage_35.0", "A"),
    "Mixed_5c": ("stage_35.1", "A"),
    "Mixed_5d": ("stage_35.2", "A"),
    "Mixed_6a": ("stage_17.0", "B"),
    **{f"Mixed_6{c}": (f"stage_17.{i + 1}", "C") for i, c in enumerate("bcde")},
    "Mixed_7a": ("stage_8.0", "D"),
    "Mixed_7b": ("stage_8.1", "E"),
    "Mixed_7c": ("stage_8.2", "E"),
}
_V3_FIXED = {
    "Conv2d_1a_3x3": "stem.0",
    "Conv2d_2a_3x3": "stem.1",
    "Conv2d_2b_3x3": "stem.2",
    "Conv2d_3b_1x1": "stem.4",  # stem.3 is the first max pool
    "Conv2d_4a_3x3": "stem.5",
    "AuxLogits.conv0": "aux.reduce",
    "AuxLogits.conv1": "aux.conv",
    "AuxLogits.fc": "aux.fc",
    "fc": "head.fc",
}


def _inception_v3_block(path: str) -> str | None:
    mixed, _, conv = path.partition(".")
    if mixed not in _V3_MIXED:
        return _V3_FIXED.get(path)
    module, kind = _V3_MIXED[mixed]
    branches = _V3_BRANCHES[kind]
    if isinstance(branches.get(conv), str):
        return f"{module}.branches.{branches[conv]}"
    chain = re.fullmatch(r"(\w+?)_(\d)([ab]?)", conv)
    if chain is None or not isinstance(branches.get(chain[1]), int):
        return None
    split = f".branches.{'ab'.index(chain[3])}" if chain[3] else ""
    return f"{module}.branches.{branches[chain[1]]}.{int(chain[2]) - 1}{split}"


_RESNETS = "resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d resnext101_32x8d"
_VGG = _classic({"classifier.0": "hidden.0", "classifier.3": "hidden.3", "classifier.6": "fc"})
FAMILIES: dict[str, Family] = {
    "alexnet": Family(
        _classic({"classifier.1": "hidden.1", "classifier.4": "hidden.4", "classifier.6": "fc"}),
        "fc",
    ),
    **{f"vgg{depth}{bn}": Family(_VGG, "fc") for depth in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{name: Family(_resnet, "head.fc") for name in _RESNETS.split()},
    **{f"densenet{depth}": Family(_densenet, "head.fc") for depth in (121, 161, 169, 201)},
    "googlenet": Family(
        _basic_conv(_googlenet_block), "head.fc", 224, HALF_MEAN, HALF_STD, aux_prefix="aux1."
    ),
    "inception_v3": Family(
        _basic_conv(_inception_v3_block), "head.fc", 299, HALF_MEAN, HALF_STD, "AuxLogits."
    ),
}

# Where the tensors fit but cnnlab's network computes something else than torchvision's.
DIFFERENCES = {
    "googlenet": "the max pool after inception4e is 3x3/2 in cnnlab (as in the paper), 2x2/2 "
    "in torchvision",
    "inception_v3": "the 3x3 average pools inside the Inception modules leave the zero padding "
    "out of the average in cnnlab (as TensorFlow, where these weights come from); torchvision "
    "counts it",
}


# ---- conversion ---------------------------------------------------------------------------------


def supported_models() -> list[str]:
    """The cnnlab models whose torchvision weights can be converted."""
    return sorted(FAMILIES)


def convert_torchvision_state_dict(
    model_name: str, state_dict: Mapping[str, torch.Tensor], accept_differences: bool = False
) -> ConvertedWeights:
    """Rename a torchvision state dict for the cnnlab model `model_name`; refuses (one
    CnnlabError) keys that match nothing, cnnlab tensors left empty, other shapes, and models
    whose network differs from torchvision's unless `accept_differences`."""
    family = _family(model_name)
    difference = DIFFERENCES.get(model_name)
    if difference and not accept_differences:
        raise CnnlabError(
            f"{model_name}: torchvision's weights fit cnnlab's network by name and shape, but "
            f"the networks differ ({difference}), so its outputs would not be torchvision's; "
            "accept the differences (accept_differences=True, --accept-differences) to convert "
            "anyway, e.g. to fine-tune from these weights"
        )
    _check_tensors(state_dict)
    converted = _try_convert(model_name, family, state_dict)
    if isinstance(converted, list):
        fits = [name for name in supported_models() if _fits(name, state_dict)]
        if fits:
            raise CnnlabError(
                f"these tensors are not torchvision's {model_name} but its {' or '.join(fits)}: "
                f"convert them as that model (--model {fits[0]})"
            )
        raise CnnlabError(
            f"these tensors are not torchvision's {model_name}: {'; '.join(converted)}"
        )
    converted.difference = difference
    return converted


def load_torchvision_state_dict(
    model_name: str, state_dict: Mapping[str, torch.Tensor], accept_differences: bool = False
) -> nn.Module:
    """The cnnlab model `model_name` holding a torchvision state dict's weights, in eval mode."""
    return convert_torchvision_state_dict(model_name, state_dict, accept_differences).build()


def _family(model_name: str) -> Family:
    if model_name not in FAMILIES:
        raise CnnlabError(
            f"cnnlab cannot import torchvision weights for {model_name!r}: expected one of "
            f"{', '.join(supported_models())}"
        )
    return FAMILIES[model_name]


def _check_tensors(state_dict: Mapping) -> None:
    if not isinstance(state_dict, Mapping) or not state_dict:
        found = "an empty dict" if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise CnnlabError(f"expected a state dict (a dict of named tensors), found {found}")
    odd = [
        f"{key!r} ({type(value).__name__})"
        for key, value in state_dict.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if odd:
        raise CnnlabError(
            "expected a state dict (a dict of named tensors), but these entries are not tensors: "
            f"{_listing(odd)}; if this is a training checkpoint, save its model's state_dict alone"
        )


def _fits(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> bool:
    return not isinstance(_try_convert(model_name, FAMILIES[model_name], state_dict), list)


def _try_convert(
    model_name: str, family: Family, state_dict: Mapping[str, torch.Tensor]
) -> ConvertedWeights | list[str]:
    """The converted weights, or the list of problems."""
    renamed, unmatched, twice = _rename_all(family.rename, state_dict)
    options = {}
    if family.aux_prefix is not None:
        options["aux_logits"] = any(key.startswith(family.aux_prefix) for key in state_dict)
    classifier = renamed.get(f"{family.classifier}.weight")
    fits = classifier is not None and state_dict[classifier].dim() == 2
    num_classes = state_dict[classifier].shape[0] if fits else 1000
    with torch.device("meta"):
        expected = create_model(model_name, num_classes=num_classes, **options).state_dict()
    unmatched += [source for target, source in renamed.items() if target not in expected]
    missing = [k for k in expected if k not in renamed and not k.endswith(BATCH_COUNTER)]
    misshapen = [
        f"{source} {tuple(state_dict[source].shape)} for {target} {tuple(expected[target].shape)}"
        for target, source in renamed.items()
        if target in expected and state_dict[source].shape != expected[target].shape
    ]
    retyped = [
        f"{source} ({state_dict[source].dtype})"
        for target, source in renamed.items()
        if target in expected
        and state_dict[source].is_floating_point() != expected[target].is_floating_point()
    ]
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("torchvision keys with no counterpart in cnnlab's model", unmatched),
            ("keys renamed onto a tensor another key fills", twice),
            ("cnnlab tensors no key fills", missing),
            ("shape mismatches (torchvision key, shape, cnnlab tensor, shape)", misshapen),
            ("float tensors for integer ones or the reverse", retyped),
        )
        if keys
    ]
    if problems:
        return problems
    weights, counters = {}, 0
    device = next(iter(state_dict.values())).device  # the weights stay where they are
    for key, value in expected.items():
        if key in renamed:
            weights[key] = state_dict[renamed[key]].detach().to(dtype=value.dtype, copy=True)
        else:  # a num_batches_tracked the file lacks
            weights[key] = torch.zeros((), dtype=value.dtype, device=device)
            counters += 1
    return ConvertedWeights(model_name, num_classes, options, weights, counters)


def _rename_all(
    rename: Rename, state_dict: Mapping[str, torch.Tensor]
) -> tuple[dict[str, str], list[str], list[str]]:
    """cnnlab key -> torchvision key, the keys no rule renames, and the keys renamed onto a
    cnnlab key that an earlier one took (a file holding both spellings of a DenseNet layer)."""
    renamed: dict[str, str] = {}
    unmatched, twice = [], []
    for key in state_dict:
        module, _, leaf = key.rpartition(".")
        new_module = rename(module)
        if new_module is None:
            unmatched.append(key)
        elif f"{new_module}.{leaf}" in renamed:
            twice.append(f"{key} (as {renamed[f'{new_module}.{leaf}']})")
        else:
            renamed[f"{new_module}.{leaf}"] = key
    return renamed, unmatched, twice


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"


# ---- files ---------------------------------------------------------------------------------------


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
    _check_tensors(loaded)
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
    the metadata `cnnlab eval`, `predict` and `train --init-from` need; `classes` names the
    classes (default: their indices). Returns the conversion and the metadata written."""
    family = _family(model_name)
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
