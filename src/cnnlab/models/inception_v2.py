"""BN-Inception ("Inception-v2"): GoogLeNet rebuilt around Batch Normalization.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift" (2015), section 4.2 and the Inception table of its appendix (Figure 5). Compared
with GoogLeNet: BatchNorm after every conv (so convs drop their bias), every 5x5 conv replaced by
two stacked 3x3 convs, three 28x28 modules instead of two, stride-2 modules (3c, 4e) instead of
max pools between stages, and average or max pooling inside each module as the table says. No
auxiliary heads and no dropout (section 4.2.1 removes it).

The paper's first layer is a separable 7x7 conv (depth multiplier 8); this is the plain 7x7 conv
of the Caffe re-implementations. The paper quotes 13.6M parameters; its table adds up to
11,285,224 with a 1000-way classifier, which is what this builds. The paper gives no
initialisation: convs and the classifier start Xavier-uniform as those re-implementations fill
them, BatchNorm at weight 1, bias 0.

`Branches` (parallel branches concatenated along channels) is shared with Inception-v3/v4 and
Inception-ResNet.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.registry import register_model

PAPER = (
    "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift"
)

# Figure 5 of the paper, one row per module: #1x1, #3x3 reduce, #3x3, double #3x3 reduce,
# double #3x3, pooling, pool projection, stride. The stride-2 modules (3c, 4e) have no 1x1
# branch and pass their max-pooled input through unprojected (projection 0). The table's
# output-size column says 576 channels after 4c and 4d and 1024 after 4e, but its branch widths
# add up to 608, 608 and 1056; the branches are what a network built from it has.
MODULES = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class Branches(nn.Module):
    """Runs parallel branches on one input and concatenates their outputs along channels."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def inception_module(
    cin: int,
    ch1x1: int,
    ch3x3_reduce: int,
    ch3x3: int,
    dbl_reduce: int,
    dbl: int,
    pool: str,
    pool_proj: int,
    stride: int,
) -> tuple[Branches, int]:
    """One row of the table; returns the module and its output width."""
    # Every layer pads by 1 (max pools included) so stride-2 branches agree on odd map sizes.
    pool_layer = nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, stride, 1)
    branches = [
        nn.Sequential(
            ConvNormAct(cin, ch3x3_reduce, 1), ConvNormAct(ch3x3_reduce, ch3x3, 3, stride, 1)
        ),
        nn.Sequential(
            ConvNormAct(cin, dbl_reduce, 1),
            ConvNormAct(dbl_reduce, dbl, 3, 1, 1),
            ConvNormAct(dbl, dbl, 3, stride, 1),
        ),
        nn.Sequential(pool_layer, ConvNormAct(cin, pool_proj, 1)) if pool_proj else pool_layer,
    ]
    if ch1x1:
        branches.insert(0, ConvNormAct(cin, ch1x1, 1))
    return Branches(*branches), ch1x1 + ch3x3 + dbl + (pool_proj or cin)


class InceptionV2(ClassifierModel):
    """Stem (7x7/2 conv, pool, 1x1 and 3x3 convs, pool), ten Inception modules, global pool."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "inception_v2", num_classes, in_channels
        # Padded throughout, so the only limit is the total downsampling by 32.
        self.default_cfg = DefaultCfg((in_channels, 224, 224), (32, 32), PAPER, 2015)
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, 64, 7, 2, 3),
            nn.MaxPool2d(3, 2, 1),
            ConvNormAct(64, 64, 1),
            ConvNormAct(64, 192, 3, 1, 1),
            nn.MaxPool2d(3, 2, 1),
        )
        modules, width = OrderedDict(), 192
        for name, spec in MODULES.items():
            modules[f"inception_{name}"], width = inception_module(width, *spec)
        self.inception = nn.Sequential(modules)
        self.num_features = width
        self.head = GlobalPoolHead(width, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception(self.stem(x))


@register_model
def inception_v2(num_classes: int = 1000, in_channels: int = 3) -> InceptionV2:
    """BN-Inception (Ioffe & Szegedy, 2015), 224x224 input."""
    return InceptionV2(num_classes, in_channels)
