"""FastNet: a small VGG-style network for reaching a good accuracy on small images quickly.

It is the network of the `fast` training recipes (runs/recipes.py). Its shape follows the
CIFAR-10 speed-run networks: David Page's ResNet-9 ("How to Train Your ResNet", DAWNBench,
2018) and Keller Jordan's airbench ("94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024).
A 3x3 conv stem, then one block per width: conv -> 2x2 max pool -> BatchNorm -> ReLU, and
`depth - 1` more conv -> BatchNorm -> ReLU at the pooled size. Pooling straight after the
first conv of a block, before its BatchNorm and activation, makes those run on a quarter of
the pixels: the speed-run networks' ordering. The head is global max pooling and a linear
layer. With the default widths (32, 64, 128) on 28x28 grayscale images and 10 classes it has
0.30M parameters and costs 17.8 MMACs per image; the `fast-90` form, (16, 32, 64) without a
stem and one conv per block, 24k parameters and 1.9 MMACs.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg, linear_or_identity
from cnnlab.models.registry import register_model

PAPER = "How to Train Your ResNet (Page); 94% on CIFAR-10 in 3.29 Seconds (Jordan)"


class GlobalMaxHead(nn.Module):
    """Global max pooling -> flatten -> linear."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = num_features
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = linear_or_identity(num_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.pool(x))
        return x if pre_logits else self.fc(x)

    def reset(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)


def _conv_bn_relu(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FastNet(ClassifierModel):
    """Stem, then one pooling block per entry of `widths` (each `depth` convs deep), then a
    global-max-pool head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...],
        stem_width: int,
        depth: int,
    ):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "fastnet", num_classes, in_channels
        if not widths or depth < 1:
            raise ValueError(f"fastnet needs widths and depth >= 1, got {widths}, {depth}")
        side = 2 ** len(widths)  # each block halves the resolution
        self.default_cfg = DefaultCfg((in_channels, 28, 28), (side, side), PAPER, 2018)
        layers, channels = [], in_channels
        if stem_width:  # 0: no stem, the first block convolves the image itself
            layers, channels = _conv_bn_relu(in_channels, stem_width, pool=False), stem_width
        for width in widths:
            layers += _conv_bn_relu(channels, width, pool=True)
            for _ in range(depth - 1):
                layers += _conv_bn_relu(width, width, pool=False)
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head = GlobalMaxHead(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def fastnet(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    widths: tuple[int, ...] = (32, 64, 128),
    stem_width: int = 24,
    depth: int = 2,
) -> FastNet:
    """The `fast` recipes' network; wider `widths` trade speed for accuracy."""
    return FastNet(num_classes, in_channels, tuple(widths), stem_width, depth)
