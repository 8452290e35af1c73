"""Network in Network: micro-networks of 1x1 convolutions and a global-average-pooling head.

Lin, Chen, Yan, "Network In Network" (ICLR 2014). Each 'mlpconv' block is one spatial
convolution followed by two 1x1 convolutions (a small MLP shared across positions), each with a
ReLU. The last block has one channel per class and global average pooling turns its maps into
scores: no fully connected layer. This is the ImageNet-sized form d2l trains (Zhang et al.,
"Dive into Deep Learning", section 8.3): blocks of 96, 256 and 384 channels with AlexNet's
kernel sizes, each followed by a 3x3/2 max pool, then dropout 0.5 before the class block.
Weights start Xavier-uniform with zero biases, as d2l's training code initialises them.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.registry import register_model

PAPER = "Network In Network (Lin, Chen, Yan)"

# out channels, kernel, stride, padding of each block's spatial conv; a 3x3/2 max pool follows.
BLOCKS = (
    (96, 11, 4, 0),
    (256, 5, 1, 2),
    (384, 3, 1, 1),
)

# Unpadded 11x11/4 conv, then three 3/2 pools around 'same' blocks: the last pool needs 3
# pixels, the second 7, the first 15, and the first conv (67 - 11) // 4 + 1 = 15 needs 67.
MIN_INPUT = 67


class NiN(ClassifierModel):
    """Three mlpconv blocks with max pooling, then dropout, the class block and global pooling.

    The class block is the classifier: `pre_logits=True` and `num_classes=0` give the globally
    pooled 384 features of the third block instead.
    """

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "nin", num_classes, in_channels
        self.default_cfg = DefaultCfg((in_channels, 224, 224), (MIN_INPUT, MIN_INPUT), PAPER, 2014)
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride, padding in BLOCKS:
            layers += [
                _mlpconv(channels, out_channels, kernel, stride, padding),
                nn.MaxPool2d(3, 2),
            ]
            channels = out_channels
        self.num_features = channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.5)
        self.classifier = _class_block(channels, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(x)
        if not pre_logits:
            x = self.classifier(x)
        return self.flatten(self.pool(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = _class_block(self.num_features, num_classes)


def _mlpconv(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int):
    block = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 1),
        nn.ReLU(inplace=True),
    )
    for layer in block:
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return block


def _class_block(num_features: int, num_classes: int) -> nn.Module:
    # The ReLU after the last 1x1 conv stays, as in d2l's net: the class scores are non-negative.
    return _mlpconv(num_features, num_classes, 3, 1, 1) if num_classes > 0 else nn.Identity()


@register_model
def nin(num_classes: int = 1000, in_channels: int = 3) -> NiN:
    """Network in Network as d2l trains it: three mlpconv blocks, a class block, global pooling."""
    return NiN(num_classes, in_channels)
