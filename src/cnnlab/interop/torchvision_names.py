"""How the names of torchvision's state dicts become those of cnnlab's models, family by family.

Each `Family` renames torchvision module paths to cnnlab's (`None`: no counterpart), names the
cnnlab classifier that gives the class count, and says how the weights' inputs are prepared:
image size, mean and std (GoogLeNet's and Inception-v3's pretrained files expect inputs scaled
to [-1, 1], which torchvision's `transform_input` makes inside the model and the mean and std
0.5 make here). For those two, cnnlab's default network follows the paper where torchvision
does not (`difference`); the `torchvision_compat` build option gives torchvision's network.
The rules are checked against the models they rename in torchvision_weights.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from cnnlab.errors import CnnlabError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's `transform_input` turns ImageNet-normalised inputs into (x - 0.5) / 0.5.
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

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
    # How cnnlab's default network computes otherwise than torchvision's; the model then has a
    # `torchvision_compat` option that gives torchvision's network.
    difference: str | None = None


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
        _basic_conv(_googlenet_block),
        "head.fc",
        mean=HALF_MEAN,
        std=HALF_STD,
        aux_prefix="aux1.",
        difference="the max pool after inception4e is 3x3/2 in cnnlab's default (as in the "
        "paper), 2x2/2 in torchvision",
    ),
    "inception_v3": Family(
        _basic_conv(_inception_v3_block),
        "head.fc",
        299,
        HALF_MEAN,
        HALF_STD,
        "AuxLogits.",
        difference="the 3x3 average pools inside the Inception modules leave the zero padding "
        "out of the average in cnnlab's default (as TensorFlow, where these weights come from); "
        "torchvision counts it",
    ),
}


def supported_models() -> list[str]:
    """The cnnlab models whose torchvision weights can be converted."""
    return sorted(FAMILIES)


def family_for(model_name: str) -> Family:
    """The renaming rules for `model_name`; a model without any is one CnnlabError."""
    if model_name not in FAMILIES:
        raise CnnlabError(
            f"cnnlab cannot import torchvision weights for {model_name!r}: expected one of "
            f"{', '.join(supported_models())}"
        )
    return FAMILIES[model_name]
