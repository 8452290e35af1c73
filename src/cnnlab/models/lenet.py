"""LeNet-5 in the three forms d2l trains on Fashion-MNIST.

LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document Recognition" (1998).
`lenet` is the form of d2l's chapter 7.6 (Zhang et al., "Dive into Deep Learning"): 5x5 convs with
6 and 16 channels (the first padded by 2 so 28x28 inputs keep their size), sigmoid, 2x2 average
pooling, and fully connected layers of 120, 84 and `num_classes` units. `lenet_bn` adds BatchNorm
after every conv and hidden linear layer (d2l 8.5); `lenet_modern` uses ReLU and max pooling.
Weights start Xavier-uniform, as d2l's training code initialises them.
"""

from __future__ import annotations

from torch import nn

from cnnlab.models.base import DefaultCfg, FullyConnectedHeadModel, linear_or_identity
from cnnlab.models.layers import FixedSizePool
from cnnlab.models.registry import register_model

PAPER = "Gradient-Based Learning Applied to Document Recognition (LeCun et al.)"


class LeNet(FullyConnectedHeadModel):
    """Two conv/pool stages, then 120-84-`num_classes` fully connected layers.

    An adaptive pool to 5x5 (the identity at 28x28) lets inputs of other sizes through, e.g. the
    original 32x32.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        activation: type[nn.Module],
        pool: type[nn.Module],
        batch_norm: bool,
    ):
        super().__init__()
        self.name, self.num_classes, self.in_channels = name, num_classes, in_channels
        self.default_cfg = DefaultCfg((in_channels, 28, 28), (12, 12), PAPER, 1998)
        self.num_features = 84
        self.features = nn.Sequential(
            *_conv(in_channels, 6, 5, 2, batch_norm, activation),
            pool(2, 2),
            *_conv(6, 16, 5, 0, batch_norm, activation),
            pool(2, 2),
        )
        self.pool = FixedSizePool((5, 5))
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Sequential(
            *_linear(16 * 5 * 5, 120, batch_norm, activation),
            *_linear(120, 84, batch_norm, activation),
        )
        self.fc = linear_or_identity(84, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


def _conv(cin, cout, kernel, padding, batch_norm, activation) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, padding=padding)]
    return [*layers, nn.BatchNorm2d(cout), activation()] if batch_norm else [*layers, activation()]


def _linear(fin, fout, batch_norm, activation) -> list[nn.Module]:
    layers = [nn.Linear(fin, fout)]
    return [*layers, nn.BatchNorm1d(fout), activation()] if batch_norm else [*layers, activation()]


@register_model
def lenet(num_classes: int = 1000, in_channels: int = 3) -> LeNet:
    """LeNet-5 as d2l trains it: sigmoid, 2x2 average pooling."""
    return LeNet("lenet", num_classes, in_channels, nn.Sigmoid, nn.AvgPool2d, batch_norm=False)


@register_model
def lenet_bn(num_classes: int = 1000, in_channels: int = 3) -> LeNet:
    """LeNet-5 with BatchNorm after every conv and hidden linear layer (Ioffe & Szegedy, 2015)."""
    return LeNet("lenet_bn", num_classes, in_channels, nn.Sigmoid, nn.AvgPool2d, batch_norm=True)


@register_model
def lenet_modern(num_classes: int = 1000, in_channels: int = 3) -> LeNet:
    """LeNet-5 with ReLU and 2x2 max pooling."""
    return LeNet("lenet_modern", num_classes, in_channels, nn.ReLU, nn.MaxPool2d, batch_norm=False)
