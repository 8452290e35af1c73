"""DenseNet-BC for ImageNet, and the small DenseNet that d2l trains on Fashion-MNIST.

Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks" (2017). Inside
a dense block every layer sees the concatenation of the block input and all earlier layers'
outputs, and adds `growth_rate` new feature maps of its own, so a block of L layers turns C
channels into C + L * growth_rate. Layers are pre-activated (BN-ReLU-conv). Between blocks a
transition (BN-ReLU-1x1 conv, 2x2/2 average pool) halves the resolution and, in DenseNet-C,
compresses the channels by 0.5.

`densenet121/161/169/201` are the paper's ImageNet DenseNet-BC (Table 1): the 7x7/2 conv-BN-ReLU
and 3x3/2 max pool stem of ResNet with 2 * growth_rate channels, bottleneck layers (BN-ReLU-1x1
conv to 4 * growth_rate channels, then BN-ReLU-3x3 conv to growth_rate), compression 0.5, and a
final BN-ReLU before global average pooling and the classifier. Weights start as in the authors'
Torch code: Kaiming-normal convs (fan_out), BatchNorm 1/0, classifier bias 0. `drop_rate` adds
the paper's dropout after every conv but the stem's (it used 0.2 on data without augmentation).

`densenet_d2l` is the network of "Dive into Deep Learning" (Zhang et al.), section 8.7, built for
96x96 Fashion-MNIST: the same stem with 64 channels, four dense blocks of four BN-ReLU-3x3 conv
layers (growth 32, no bottleneck, convs keeping their bias), transitions halving the channels,
and the final BN-ReLU, pool and linear layer. Its weights start Xavier-uniform with zero biases,
as d2l's training code initialises them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlab.errors import UnknownModelError
from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.layers import GlobalPoolHead
from cnnlab.models.registry import register_model

PAPER = "Densely Connected Convolutional Networks (Huang et al.)"
YEAR = 2017

BOTTLENECK_FACTOR = 4  # a bottleneck 1x1 conv makes 4 * growth_rate channels
COMPRESSION = 0.5
MIN_INPUT_SIZE = 32  # stem /4, then three transitions /2
# name: (growth rate, layers per dense block), Table 1 of the paper; the stem has 2 * growth
DENSENET_BC = {
    "densenet121": (32, (6, 12, 24, 16)),
    "densenet161": (48, (6, 12, 36, 24)),
    "densenet169": (32, (6, 12, 32, 32)),
    "densenet201": (32, (6, 12, 48, 32)),
}
D2L_STEM_CHANNELS = 64
D2L_BLOCKS = 4


def bn_relu_conv(
    in_channels: int, out_channels: int, kernel_size: int, bias: bool, drop_rate: float
) -> list[nn.Module]:
    """The pre-activated conv every DenseNet layer is made of, with optional dropout after."""
    layers: list[nn.Module] = [
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
    ]
    return [*layers, nn.Dropout(drop_rate)] if drop_rate > 0 else layers


class DenseLayer(nn.Sequential):
    """Makes `growth_rate` new maps; with `bottleneck` a 1x1 conv narrows the input first."""

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: bool, bias: bool, drop_rate: float
    ):
        if bottleneck:
            width = BOTTLENECK_FACTOR * growth_rate
            layers = bn_relu_conv(in_channels, width, 1, bias, drop_rate)
            layers += bn_relu_conv(width, growth_rate, 3, bias, drop_rate)
        else:
            layers = bn_relu_conv(in_channels, growth_rate, 3, bias, drop_rate)
        super().__init__(*layers)


class DenseBlock(nn.Module):
    """`num_layers` dense layers, each fed the concatenation of everything before it."""

    def __init__(
        self,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        bottleneck: bool = False,
        bias: bool = False,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels + num_layers * growth_rate
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + index * growth_rate, growth_rate, bottleneck, bias, drop_rate)
            for index in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv to `out_channels`, then 2x2/2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool, drop_rate: float):
        super().__init__(
            *bn_relu_conv(in_channels, out_channels, 1, bias, drop_rate), nn.AvgPool2d(2, 2)
        )


def init_as_reference(module: nn.Module) -> None:
    """The authors' Torch initialisation (fb.resnet.torch's)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)


def init_as_d2l(module: nn.Module) -> None:
    """d2l's `init_cnn`: Xavier-uniform conv and linear weights; biases start at zero."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class DenseNet(ClassifierModel):
    """Stem (7x7/2 conv-BN-ReLU, 3x3/2 max pool), dense blocks joined by transitions,
    final BN-ReLU, global average pool, linear."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        *,
        stem_channels: int,
        growth_rate: int,
        block_depths: tuple[int, ...],
        bottleneck: bool,
        bias: bool,
        drop_rate: float,
        input_size: int,
        init: Callable[[nn.Module], None],
    ):
        super().__init__()
        if growth_rate < 1 or min(block_depths) < 1 or not 0 <= drop_rate < 1:
            raise UnknownModelError(
                f"{name} needs growth_rate >= 1, at least one layer per dense block and "
                f"0 <= drop_rate < 1, got growth_rate={growth_rate}, "
                f"layers per block {block_depths}, drop_rate={drop_rate}"
            )
        self.name, self.num_classes, self.in_channels = name, num_classes, in_channels
        self.default_cfg = DefaultCfg(
            (in_channels, input_size, input_size), (MIN_INPUT_SIZE, MIN_INPUT_SIZE), PAPER, YEAR
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=bias),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        channels = stem_channels
        stages: list[nn.Module] = []
        for index, depth in enumerate(block_depths):
            block = DenseBlock(channels, depth, growth_rate, bottleneck, bias, drop_rate)
            stages.append(block)
            channels = block.out_channels
            if index < len(block_depths) - 1:
                compressed = int(channels * COMPRESSION)
                stages.append(Transition(channels, compressed, bias, drop_rate))
                channels = compressed
        self.stages = nn.Sequential(*stages)
        # the layers pre-activate their inputs, so the last block's output is still raw
        self.final_act = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.num_features = channels
        self.head = GlobalPoolHead(channels, num_classes)
        self.apply(init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.stages(self.stem(x)))


def _densenet_bc(name: str, num_classes: int, in_channels: int, drop_rate: float) -> DenseNet:
    growth_rate, block_depths = DENSENET_BC[name]
    return DenseNet(
        name,
        num_classes,
        in_channels,
        stem_channels=2 * growth_rate,
        growth_rate=growth_rate,
        block_depths=block_depths,
        bottleneck=True,
        bias=False,
        drop_rate=drop_rate,
        input_size=224,
        init=init_as_reference,
    )


@register_model
def densenet121(
    num_classes: int = 1000, in_channels: int = 3, *, drop_rate: float = 0.0
) -> DenseNet:
    """DenseNet-BC-121: growth 32, (6, 12, 24, 16) layers per block."""
    return _densenet_bc("densenet121", num_classes, in_channels, drop_rate)


@register_model
def densenet161(
    num_classes: int = 1000, in_channels: int = 3, *, drop_rate: float = 0.0
) -> DenseNet:
    """DenseNet-BC-161: growth 48, (6, 12, 36, 24) layers per block, a 96-channel stem."""
    return _densenet_bc("densenet161", num_classes, in_channels, drop_rate)


@register_model
def densenet169(
    num_classes: int = 1000, in_channels: int = 3, *, drop_rate: float = 0.0
) -> DenseNet:
    """DenseNet-BC-169: growth 32, (6, 12, 32, 32) layers per block."""
    return _densenet_bc("densenet169", num_classes, in_channels, drop_rate)


@register_model
def densenet201(
    num_classes: int = 1000, in_channels: int = 3, *, drop_rate: float = 0.0
) -> DenseNet:
    """DenseNet-BC-201: growth 32, (6, 12, 48, 32) layers per block."""
    return _densenet_bc("densenet201", num_classes, in_channels, drop_rate)


@register_model
def densenet_d2l(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    growth_rate: int = 32,
    convs_per_block: int = 4,
    drop_rate: float = 0.0,
) -> DenseNet:
    """d2l's DenseNet (section 8.7): four blocks of 3x3 conv layers, no bottleneck, 96x96."""
    return DenseNet(
        "densenet_d2l",
        num_classes,
        in_channels,
        stem_channels=D2L_STEM_CHANNELS,
        growth_rate=growth_rate,
        block_depths=(convs_per_block,) * D2L_BLOCKS,
        bottleneck=False,
        bias=True,
        drop_rate=drop_rate,
        input_size=96,
        init=init_as_d2l,
    )
