"""AlexNet, the network that won ILSVRC-2012.

Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural Networks"
(NIPS 2012). The paper splits every layer over two GPUs; this is the single-tower layout that
became the common reference (64-192-384-256-256 conv channels, 61,100,840 parameters), with an
adaptive average pool to 6x6 in front of the classifier so inputs other than 224x224 fit.
`lrn=True` adds the paper's local response normalisation after the first two convolutions.
Weights start as the paper's section 5 says: N(0, 0.01), biases 1 in the second, fourth and
fifth convolutions and the hidden fully connected layers (to give ReLUs positive inputs early),
0 elsewhere.
"""

from __future__ import annotations

from torch import nn

from cnnlab.models.base import DefaultCfg, FullyConnectedHeadModel
from cnnlab.models.layers import FixedSizePool
from cnnlab.models.registry import register_model

PAPER = "ImageNet Classification with Deep Convolutional Neural Networks (Krizhevsky et al.)"

# out channels, kernel, stride, padding, initial bias, followed by LRN (when enabled), max pooled
CONVS = (
    (64, 11, 4, 2, 0.0, True, True),
    (192, 5, 1, 2, 1.0, True, True),
    (384, 3, 1, 1, 0.0, False, False),
    (256, 3, 1, 1, 1.0, False, False),
    (256, 3, 1, 1, 1.0, False, True),
)
HIDDEN = 4096
POOLED = 6  # the map size at 224x224, fixed by the adaptive pool for other sizes

# Section 3.3: b = a / (k + alpha * sum of a^2 over n neighbouring channels)^beta. PyTorch
# divides alpha by n, so the paper's alpha is passed multiplied by n.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# 11x11/4 conv (pad 2) -> 3/2 pool -> 3/2 pool -> 3/2 pool, the 'same' convs in between keep the
# size: the last pool needs 3 pixels, so the second 7, the first 15, and the first conv
# (63 + 4 - 11) // 4 + 1 = 15 needs 63.
MIN_INPUT = 63


class AlexNet(FullyConnectedHeadModel):
    """Five convolutions and three max pools, then dropout-FC-ReLU twice and the classifier."""

    def __init__(self, num_classes: int, in_channels: int, lrn: bool):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "alexnet", num_classes, in_channels
        self.default_cfg = DefaultCfg((in_channels, 224, 224), (MIN_INPUT, MIN_INPUT), PAPER, 2012)
        self.num_features = HIDDEN
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride, padding, bias, normalised, pooled in CONVS:
            conv = nn.Conv2d(channels, out_channels, kernel, stride, padding)
            _init(conv, bias)
            layers += [conv, nn.ReLU(inplace=True)]
            if lrn and normalised:
                layers.append(nn.LocalResponseNorm(LRN_SIZE, LRN_ALPHA * LRN_SIZE, LRN_BETA, LRN_K))
            if pooled:
                layers.append(nn.MaxPool2d(3, 2))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = FixedSizePool((POOLED, POOLED))
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Sequential(
            nn.Dropout(0.5),
            _init(nn.Linear(channels * POOLED * POOLED, HIDDEN), bias=1.0),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            _init(nn.Linear(HIDDEN, HIDDEN), bias=1.0),
            nn.ReLU(inplace=True),
        )
        self.fc = _classifier(HIDDEN, num_classes)

    def new_classifier(self, num_classes: int) -> nn.Module:
        return _classifier(self.num_features, num_classes)


def _init(layer: nn.Conv2d | nn.Linear, bias: float) -> nn.Module:
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.constant_(layer.bias, bias)
    return layer


def _classifier(num_features: int, num_classes: int) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    return _init(nn.Linear(num_features, num_classes), bias=0.0)


@register_model
def alexnet(num_classes: int = 1000, in_channels: int = 3, *, lrn: bool = False) -> AlexNet:
    """AlexNet (single tower); `lrn=True` adds local response normalisation after conv 1 and 2."""
    return AlexNet(num_classes, in_channels, lrn)
