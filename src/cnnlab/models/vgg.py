"""VGG, the stacks of 3x3 convolutions.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(ICLR 2015). Five stages of 3x3 'same' convolutions with 64, 128, 256, 512 and 512 channels, each
stage closed by a 2x2 max pool; configurations A, B, D and E of Table 1 (11, 13, 16 and 19 weight
layers) differ only in how many convolutions each stage holds. An adaptive average pool to 7x7
(the identity at 224x224) feeds the classifier FC-4096, FC-4096, FC-classes, with dropout 0.5
after each hidden layer. The `_bn` variants put BatchNorm between every conv and its ReLU, as
the common reference does (not in the paper, which predates BatchNorm).

`width_multiplier` scales the conv channels, as d2l trains VGG-11 on Fashion-MNIST at a quarter
width (64 -> 16, ..., 512 -> 128); `scale_classifier=True` scales the 4096-wide hidden layers
too (d2l keeps them at 4096). Weights start Glorot-uniform with zero biases: the paper reports
that this initialisation trains the deep configurations without its pre-training of the
shallower net.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import UnknownModelError
from cnnlab.models.base import DefaultCfg, FullyConnectedHeadModel
from cnnlab.models.layers import FixedSizePool
from cnnlab.models.registry import register_model

PAPER = "Very Deep Convolutional Networks for Large-Scale Image Recognition (Simonyan & Zisserman)"

STAGE_WIDTHS = (64, 128, 256, 512, 512)
# Table 1: convolutions per stage.
CONVS_PER_STAGE = {
    "A": (1, 1, 2, 2, 2),  # VGG-11
    "B": (2, 2, 2, 2, 2),  # VGG-13
    "D": (2, 2, 3, 3, 3),  # VGG-16
    "E": (2, 2, 4, 4, 4),  # VGG-19
}
HIDDEN = 4096
POOLED = 7  # the map size at 224x224, fixed by the adaptive pool for other sizes
MIN_INPUT = 32  # five 2x2 pools; the convs are padded


class VGG(FullyConnectedHeadModel):
    """The conv stages of one Table 1 configuration, then the three fully connected layers."""

    def __init__(
        self,
        name: str,
        config: str,
        num_classes: int,
        in_channels: int,
        batch_norm: bool,
        width_multiplier: float,
        scale_classifier: bool,
    ):
        super().__init__()
        if not width_multiplier > 0:
            raise UnknownModelError(f"{name}: width_multiplier must be > 0, got {width_multiplier}")
        self.name, self.num_classes, self.in_channels = name, num_classes, in_channels
        self.default_cfg = DefaultCfg((in_channels, 224, 224), (MIN_INPUT, MIN_INPUT), PAPER, 2015)
        hidden = _scaled(HIDDEN, width_multiplier) if scale_classifier else HIDDEN
        self.num_features = hidden

        layers: list[nn.Module] = []
        channels = in_channels
        for width, convs in zip(STAGE_WIDTHS, CONVS_PER_STAGE[config], strict=True):
            out_channels = _scaled(width, width_multiplier)
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                channels = out_channels
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = FixedSizePool((POOLED, POOLED))
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Sequential(
            nn.Linear(channels * POOLED * POOLED, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.fc = _classifier(hidden, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                _init(module)

    def new_classifier(self, num_classes: int) -> nn.Module:
        return _classifier(self.num_features, num_classes)


def _scaled(width: int, multiplier: float) -> int:
    return max(1, round(width * multiplier))


def _init(layer: nn.Conv2d | nn.Linear) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    return _init(nn.Linear(num_features, num_classes)) if num_classes > 0 else nn.Identity()


@register_model
def vgg11(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-11 (configuration A)."""
    return VGG("vgg11", "A", num_classes, in_channels, False, width_multiplier, scale_classifier)


@register_model
def vgg13(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-13 (configuration B)."""
    return VGG("vgg13", "B", num_classes, in_channels, False, width_multiplier, scale_classifier)


@register_model
def vgg16(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-16 (configuration D)."""
    return VGG("vgg16", "D", num_classes, in_channels, False, width_multiplier, scale_classifier)


@register_model
def vgg19(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-19 (configuration E)."""
    return VGG("vgg19", "E", num_classes, in_channels, False, width_multiplier, scale_classifier)


@register_model
def vgg11_bn(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-11 (configuration A) with BatchNorm after every convolution."""
    return VGG("vgg11_bn", "A", num_classes, in_channels, True, width_multiplier, scale_classifier)


@register_model
def vgg13_bn(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-13 (configuration B) with BatchNorm after every convolution."""
    return VGG("vgg13_bn", "B", num_classes, in_channels, True, width_multiplier, scale_classifier)


@register_model
def vgg16_bn(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-16 (configuration D) with BatchNorm after every convolution."""
    return VGG("vgg16_bn", "D", num_classes, in_channels, True, width_multiplier, scale_classifier)


@register_model
def vgg19_bn(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    width_multiplier: float = 1.0,
    scale_classifier: bool = False,
) -> VGG:
    """VGG-19 (configuration E) with BatchNorm after every convolution."""
    return VGG("vgg19_bn", "E", num_classes, in_channels, True, width_multiplier, scale_classifier)
