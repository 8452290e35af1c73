"""Inception-ResNet-v2: Inception modules as the residual branches of a ResNet.

Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning" (2017), Figures 15-20. Each block runs a small Inception module, maps
its concatenated output back to the trunk's width with a 1x1 "up" conv (bias, no BatchNorm: it
must be able to produce any sign), scales it down and adds it to the trunk, then applies ReLU.
Section 3.3: scaling the residuals (0.17, 0.10, 0.20 for blocks A, B, C, as in the authors' code)
keeps the very wide network from dying early in training. 10 blocks on the 35x35 grid, 20 on
17x17, 10 on 8x8 (the last without scaling or ReLU), a 1x1 conv to 1536, global average
pooling, dropout (keep probability 0.8), classifier. BatchNorm eps 0.001; no auxiliary head.

The widths are those of the authors' TF-slim code, whose parameter count (55,843,464) is the
published one. It differs from the paper's figures in the stem: Inception-v3's stem plus a
35x35 module with 320 outputs instead of the Figure 3 stem with 384, so the trunk is 320 / 1088
/ 2080 wide instead of the figures' 384 / 1154 / 2048. Weights start as that code leaves them:
Xavier-uniform for convs and the classifier, zero biases, BatchNorm at weight 1, bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.inception_v2 import Branches
from cnnlab.models.inception_v3 import avg_pool, conv, conv_same
from cnnlab.models.inception_v3 import stem as inception_v3_stem
from cnnlab.models.inception_v4 import PAPER, reduction_a
from cnnlab.models.layers import GlobalPoolHead
from cnnlab.models.registry import register_model

# (blocks, residual scale) on the 35x35, 17x17 and 8x8 grids.
STAGES = ((10, 0.17), (20, 0.10), (10, 0.20))


class ResidualInception(nn.Module):
    """x + scale * up(branches(x)), then ReLU (Figure 20)."""

    def __init__(
        self, branches: Branches, branch_width: int, width: int, scale: float, activate: bool = True
    ):
        super().__init__()
        self.branches = branches
        self.up = nn.Conv2d(branch_width, width, 1)
        self.scale = scale
        self.act = nn.ReLU(inplace=True) if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.scale * self.up(self.branches(x)))


def mixed_5b() -> Branches:
    """The 35x35 module closing the code's stem: 192 -> 96 + 64 + 96 + 64 = 320 channels."""
    return Branches(
        conv(192, 96, 1),
        nn.Sequential(conv(192, 48, 1), conv(48, 64, 5, padding=2)),
        nn.Sequential(conv(192, 64, 1), conv_same(64, 96, 3, 3), conv_same(96, 96, 3, 3)),
        nn.Sequential(avg_pool(), conv(192, 64, 1)),
    )


def block_a(width: int, scale: float) -> ResidualInception:
    """Figure 16, 35x35 grid."""
    branches = Branches(
        conv(width, 32, 1),
        nn.Sequential(conv(width, 32, 1), conv_same(32, 32, 3, 3)),
        nn.Sequential(conv(width, 32, 1), conv_same(32, 48, 3, 3), conv_same(48, 64, 3, 3)),
    )
    return ResidualInception(branches, 32 + 32 + 64, width, scale)


def block_b(width: int, scale: float) -> ResidualInception:
    """Figure 17, 17x17 grid, 7x7 factorised into 1x7 and 7x1."""
    branches = Branches(
        conv(width, 192, 1),
        nn.Sequential(conv(width, 128, 1), conv_same(128, 160, 1, 7), conv_same(160, 192, 7, 1)),
    )
    return ResidualInception(branches, 192 + 192, width, scale)


def block_c(width: int, scale: float, activate: bool = True) -> ResidualInception:
    """Figure 19, 8x8 grid, 3x3 factorised into 1x3 and 3x1."""
    branches = Branches(
        conv(width, 192, 1),
        nn.Sequential(conv(width, 192, 1), conv_same(192, 224, 1, 3), conv_same(224, 256, 3, 1)),
    )
    return ResidualInception(branches, 192 + 256, width, scale, activate)


def reduction_b(cin: int) -> Branches:
    """Figure 18, 17x17 -> 8x8; output width 384 + 288 + 320 + cin."""
    return Branches(
        nn.Sequential(conv(cin, 256, 1), conv(256, 384, 3, stride=2)),
        nn.Sequential(conv(cin, 256, 1), conv(256, 288, 3, stride=2)),
        nn.Sequential(conv(cin, 256, 1), conv_same(256, 288, 3, 3), conv(288, 320, 3, stride=2)),
        nn.MaxPool2d(3, 2),
    )


class InceptionResNetV2(ClassifierModel):
    """Stem, three stages of scaled residual Inception blocks with reductions, 1x1 conv, head."""

    def __init__(self, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        self.name = "inception_resnet_v2"
        self.num_classes, self.in_channels = num_classes, in_channels
        # Unpadded convs: 75 is the smallest input that leaves the last reduction a 3x3 map.
        self.default_cfg = DefaultCfg((in_channels, 299, 299), (75, 75), PAPER, 2017)
        self.num_features = 1536
        (blocks_a, scale_a), (blocks_b, scale_b), (blocks_c, scale_c) = STAGES
        self.features = nn.Sequential(
            inception_v3_stem(in_channels),  # 35x35x192
            mixed_5b(),  # 35x35x320
            *(block_a(320, scale_a) for _ in range(blocks_a)),
            reduction_a(320, k=256, l=256, m=384, n=384),  # 17x17x1088
            *(block_b(1088, scale_b) for _ in range(blocks_b)),
            reduction_b(1088),  # 8x8x2080
            *(block_c(2080, scale_c) for _ in range(blocks_c - 1)),
            # The last block hands its sum straight to the 1x1 conv below.
            block_c(2080, 1.0, activate=False),
            conv(2080, 1536, 1),
        )
        self.head = GlobalPoolHead(1536, num_classes, dropout)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def inception_resnet_v2(
    num_classes: int = 1000, in_channels: int = 3, *, dropout: float = 0.2
) -> InceptionResNetV2:
    """Inception-ResNet-v2 (Szegedy et al., 2017), 299x299 input."""
    return InceptionResNetV2(num_classes, in_channels, dropout)
