"""Inception-v4: a uniform, deeper Inception network for 299x299 inputs.

Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning" (2017), Figures 3-9. A stem of unpadded convs with parallel
conv/pool branches takes 299x299 to 35x35x384, then 4 Inception-A modules, Reduction-A,
7 Inception-B (17x17, factorised 7x7), Reduction-B and 3 Inception-C (8x8), global average
pooling, dropout (keep probability 0.8) and the classifier. No auxiliary head; BatchNorm eps
0.001.

Where the figures and the authors' TF-slim code orient a factorised conv differently (1x7 before
7x1 or the reverse; same parameter count) this follows the code, as does the weight
initialisation: He-scaled truncated normal for convs (TF's variance-scaling initialiser, whose
std sqrt(1.3 * 2 / fan_in) makes up for the truncation at two standard deviations),
Xavier-uniform for the classifier, BatchNorm at weight 1, bias 0.

`reduction_a` takes the (k, l, m, n) widths of the paper's Table 1 and is shared with
Inception-ResNet-v2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.inception_v2 import Branches
from cnnlab.models.inception_v3 import avg_pool, conv, conv_same
from cnnlab.models.layers import GlobalPoolHead
from cnnlab.models.registry import register_model

PAPER = "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning"

# (Inception-A, Inception-B, Inception-C) modules per grid: Figure 9.
DEPTHS = (4, 7, 3)


def stem(in_channels: int) -> nn.Sequential:
    """Figure 3: 299x299 -> 35x35x384."""
    return nn.Sequential(
        conv(in_channels, 32, 3, stride=2),
        conv(32, 32, 3),
        conv(32, 64, 3, padding=1),
        Branches(nn.MaxPool2d(3, 2), conv(64, 96, 3, stride=2)),
        Branches(
            nn.Sequential(conv(160, 64, 1), conv(64, 96, 3)),
            nn.Sequential(
                conv(160, 64, 1),
                conv_same(64, 64, 1, 7),
                conv_same(64, 64, 7, 1),
                conv(64, 96, 3),
            ),
        ),
        Branches(conv(192, 192, 3, stride=2), nn.MaxPool2d(3, 2)),
    )


def inception_a(cin: int) -> Branches:
    """Figure 4, 35x35 grid; output width 384."""
    return Branches(
        conv(cin, 96, 1),
        nn.Sequential(conv(cin, 64, 1), conv_same(64, 96, 3, 3)),
        nn.Sequential(conv(cin, 64, 1), conv_same(64, 96, 3, 3), conv_same(96, 96, 3, 3)),
        nn.Sequential(avg_pool(), conv(cin, 96, 1)),
    )


def reduction_a(cin: int, k: int, l: int, m: int, n: int) -> Branches:  # noqa: E741 (Table 1)
    """Figure 7, 35x35 -> 17x17; output width n + m + cin."""
    return Branches(
        conv(cin, n, 3, stride=2),
        nn.Sequential(conv(cin, k, 1), conv_same(k, l, 3, 3), conv(l, m, 3, stride=2)),
        nn.MaxPool2d(3, 2),
    )


def inception_b(cin: int) -> Branches:
    """Figure 5, 17x17 grid; output width 1024."""
    return Branches(
        conv(cin, 384, 1),
        nn.Sequential(conv(cin, 192, 1), conv_same(192, 224, 1, 7), conv_same(224, 256, 7, 1)),
        nn.Sequential(
            conv(cin, 192, 1),
            conv_same(192, 192, 7, 1),
            conv_same(192, 224, 1, 7),
            conv_same(224, 224, 7, 1),
            conv_same(224, 256, 1, 7),
        ),
        nn.Sequential(avg_pool(), conv(cin, 128, 1)),
    )


def reduction_b(cin: int) -> Branches:
    """Figure 8, 17x17 -> 8x8; output width 192 + 320 + cin."""
    return Branches(
        nn.Sequential(conv(cin, 192, 1), conv(192, 192, 3, stride=2)),
        nn.Sequential(
            conv(cin, 256, 1),
            conv_same(256, 256, 1, 7),
            conv_same(256, 320, 7, 1),
            conv(320, 320, 3, stride=2),
        ),
        nn.MaxPool2d(3, 2),
    )


def inception_c(cin: int) -> Branches:
    """Figure 6, 8x8 grid with parallel 1x3 / 3x1 outputs; output width 1536."""
    return Branches(
        conv(cin, 256, 1),
        nn.Sequential(
            conv(cin, 384, 1), Branches(conv_same(384, 256, 1, 3), conv_same(384, 256, 3, 1))
        ),
        nn.Sequential(
            conv(cin, 384, 1),
            conv_same(384, 448, 3, 1),
            conv_same(448, 512, 1, 3),
            Branches(conv_same(512, 256, 1, 3), conv_same(512, 256, 3, 1)),
        ),
        nn.Sequential(avg_pool(), conv(cin, 256, 1)),
    )


class InceptionV4(ClassifierModel):
    """Stem, Inception-A/B/C stages with reductions between them, global pool, dropout, linear."""

    def __init__(self, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "inception_v4", num_classes, in_channels
        # Unpadded convs: 75 is the smallest input that leaves Reduction-B a 3x3 map (1x1 out).
        self.default_cfg = DefaultCfg((in_channels, 299, 299), (75, 75), PAPER, 2017)
        self.num_features = 1536
        depth_a, depth_b, depth_c = DEPTHS
        self.features = nn.Sequential(
            stem(in_channels),
            *(inception_a(384) for _ in range(depth_a)),
            reduction_a(384, k=192, l=224, m=256, n=384),
            *(inception_b(1024) for _ in range(depth_b)),
            reduction_b(1024),
            *(inception_c(1536) for _ in range(depth_c)),
        )
        self.head = GlobalPoolHead(1536, num_classes, dropout)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                std = math.sqrt(1.3 * 2 / module.weight[0].numel())
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def inception_v4(
    num_classes: int = 1000, in_channels: int = 3, *, dropout: float = 0.2
) -> InceptionV4:
    """Inception-v4 (Szegedy et al., 2017), 299x299 input."""
    return InceptionV4(num_classes, in_channels, dropout)
