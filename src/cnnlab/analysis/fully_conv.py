"""Turn a classifier's fully connected layers into convolutions, for dense evaluation.

The VGG paper (Simonyan & Zisserman 2015, section 3.2) tests this way: the first FC layer becomes
a 7x7 convolution, the other two 1x1 convolutions, and the resulting fully convolutional net runs
on the whole uncropped image, giving a map of class scores, one per 224x224 window (stride 32),
instead of a single vector. The same holds for any net whose head is flatten + FC layers over a
map of fixed size: AlexNet (6x6), VGG (7x7) and LeNet (5x5) here.

`to_fully_convolutional(model)` leaves `model` untouched and returns a new network with the same
weights. At the model's default input size it computes the same scores, shaped N x classes x 1 x 1;
on a larger input it returns an N x classes x h x w score map.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.alexnet import AlexNet
from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.lenet import LeNet
from cnnlab.models.registry import list_models
from cnnlab.models.vgg import VGG

# Each has `features`, then an adaptive `pool` (the identity at the default input), `flatten`,
# the `hidden` FC layers and the classifier `fc`.
SUPPORTED = (AlexNet, VGG, LeNet)  # the FullyConnectedHeadModel families


class FullyConvolutional(ClassifierModel):
    """A converted classifier: the original `features`, then its FC layers as convolutions.

    `forward_head` returns score maps (pre_logits: maps of the hidden layer's width); the
    smallest input is the one whose feature map still covers the first conv's kernel.
    """

    def __init__(self, model: ClassifierModel):
        super().__init__()
        self.name = f"{model.name} (fully convolutional)"
        self.num_classes, self.in_channels = model.num_classes, model.in_channels
        self.num_features = model.num_features
        self.features = copy.deepcopy(model.features)
        window = _pair(model.pool.output_size)
        layers = []
        kernel = window  # the first FC layer sees the whole map, later ones one position of it
        for layer in [*model.hidden, model.fc]:
            if isinstance(layer, nn.Linear):
                layers.append(_linear_to_conv(layer, kernel))
                kernel = (1, 1)
            elif isinstance(layer, nn.BatchNorm1d):
                layers.append(_batch_norm_2d(layer))
            else:  # activations, dropout and Identity act elementwise: maps work as vectors do
                layers.append(copy.deepcopy(layer))
        self.hidden = nn.Sequential(*layers[:-1])
        self.fc = layers[-1]
        cfg = model.default_cfg
        min_height = _smallest_input(self.features, window[0], cfg.input_size[1], dim=0)
        min_width = _smallest_input(self.features, window[1], cfg.input_size[2], dim=1)
        self.default_cfg = DefaultCfg(cfg.input_size, (min_height, min_width), cfg.paper, cfg.year)
        self.train(model.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()


def to_fully_convolutional(model: nn.Module) -> FullyConvolutional:
    """A copy of `model` (AlexNet, VGG or LeNet) with its FC layers replaced by convolutions."""
    if not isinstance(model, SUPPORTED):
        supported = list_models("alexnet*") + list_models("vgg*") + list_models("lenet*")
        name = getattr(model, "name", type(model).__name__)
        raise CnnlabError(
            f"cannot make {name} fully convolutional: only models with a fixed-size map before "
            f"fully connected layers are supported ({', '.join(supported)})"
        )
    return FullyConvolutional(model)


def _linear_to_conv(linear: nn.Linear, kernel: tuple[int, int]) -> nn.Conv2d:
    # Flatten orders a C x H x W map channel-major, so the weight rows reshape to C x H x W kernels.
    in_channels = linear.in_features // (kernel[0] * kernel[1])
    with torch.device("meta"):
        conv = nn.Conv2d(in_channels, linear.out_features, kernel, bias=linear.bias is not None)
    state = {"weight": linear.weight.detach().reshape(conv.weight.shape).clone()}
    if linear.bias is not None:
        state["bias"] = linear.bias.detach().clone()
    conv.load_state_dict(state, assign=True)
    return conv


def _batch_norm_2d(norm: nn.BatchNorm1d) -> nn.BatchNorm2d:
    with torch.device("meta"):
        converted = nn.BatchNorm2d(
            norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats
        )
    converted.load_state_dict({k: v.clone() for k, v in norm.state_dict().items()}, assign=True)
    return converted


def _smallest_input(features: nn.Module, needed: int, default: int, dim: int) -> int:
    """The smallest input size along `dim` (0: height, 1: width) from which `features` still
    make a map of at least `needed` pixels, searching down from the default size."""
    size = default
    while size > 1 and _map_size(features, size - 1, dim) >= needed:
        size -= 1
    return size


def _map_size(features: nn.Module, size: int, dim: int) -> int:
    """The size along `dim` of the map `features` make from an input of `size`; 0 if some layer
    gets no pixel (every layer with a window is a Conv2d, MaxPool2d or AvgPool2d here)."""
    for layer in features.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _pair(layer.kernel_size)[dim]
            stride = _pair(layer.stride)[dim]
            padding = _pair(layer.padding)[dim]
            dilation = _pair(getattr(layer, "dilation", 1))[dim]
            size = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
            if size < 1:
                return 0
    return size


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value[0], value[1]) if isinstance(value, tuple) else (value, value)
