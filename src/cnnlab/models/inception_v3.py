"""Inception-v3: Inception modules with factorised convolutions, for 299x299 inputs.

Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer
Vision" (2016). A stem of unpadded 3x3 convs takes 299x299 down to 35x35; three modules on the
35x35 grid (Figure 5), a grid reduction (Figure 10), four modules on the 17x17 grid whose 7x7
convs are factorised into 1x7 and 7x1 (Figure 6), a second reduction, and two modules on the 8x8
grid whose 3x3 convs split into parallel 1x3 and 3x1 (Figure 7). An auxiliary classifier on the
17x17 grid regularises training (section 4); BatchNorm uses eps 0.001.

Layer widths follow the reference implementation whose parameter count is the published one
(27,161,264 with the auxiliary head): its 35x35 modules keep a 1x1 -> 5x5 branch next to the
double 3x3 one, and its auxiliary head has no BatchNorm on the fully connected layer. Weights
start truncated normal (std 0.1, 0.01 for the auxiliary conv, 0.001 for its classifier, cut at
two standard deviations as TensorFlow's), BatchNorm at weight 1, bias 0. Dropout before the
classifier is 0.2 (the reference TF-slim code keeps 80%; other ports use 0.5).

The 3x3/1 average pools inside the Inception modules divide by the number of real pixels, as
TensorFlow's 'SAME' pooling of the reference code. torchvision's `inception_v3` divides by 9 at
the borders too, counting the zero padding; `torchvision_compat=True` does the same, and then
computes exactly what torchvision's model computes, so that its weights give its outputs: every
other layer already matches, the auxiliary head included. Dropout stays this model's option
(torchvision's: 0.5); it acts in training only. torchvision's `transform_input`, which rescales
ImageNet-normalised inputs to mean = std = 0.5 inside its model for its pretrained weights, is no
layer here: a cnnlab model takes inputs normalised as its weights file's metadata says (0.5 for
those weights, imported).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg, linear_or_identity
from cnnlab.models.inception_v2 import Branches
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.registry import register_model

PAPER = "Rethinking the Inception Architecture for Computer Vision (Szegedy et al.)"
BN_EPS = 1e-3

# Width of the factorised 7x7 branches in the four 17x17 modules (Mixed_6b..6e).
GRID_17_WIDTHS = (128, 160, 160, 192)


def conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> ConvNormAct:
    return ConvNormAct(cin, cout, kernel, stride, padding, eps=BN_EPS)


def conv_same(cin: int, cout: int, kernel_h: int, kernel_w: int) -> ConvNormAct:
    """A stride-1 conv padded to keep the map size, e.g. the factorised 1x7 and 7x1."""
    return ConvNormAct(
        cin, cout, (kernel_h, kernel_w), padding=(kernel_h // 2, kernel_w // 2), eps=BN_EPS
    )


def avg_pool(count_padding: bool = False) -> nn.AvgPool2d:
    """3x3/1 average pool keeping the map size; by default the average of the real pixels only
    (TensorFlow's 'SAME' pooling), with `count_padding` over all 9 (torchvision's)."""
    return nn.AvgPool2d(3, 1, 1, count_include_pad=count_padding)


def stem(in_channels: int) -> nn.Sequential:
    """299x299 -> 35x35x192 with unpadded convs (Table 1's first rows)."""
    return nn.Sequential(
        conv(in_channels, 32, 3, stride=2),
        conv(32, 32, 3),
        conv(32, 64, 3, padding=1),
        nn.MaxPool2d(3, 2),
        conv(64, 80, 1),
        conv(80, 192, 3),
        nn.MaxPool2d(3, 2),
    )


def inception_35(cin: int, pool_proj: int, count_padding: bool = False) -> Branches:
    """35x35 module; output width 224 + pool_proj."""
    return Branches(
        conv(cin, 64, 1),
        nn.Sequential(conv(cin, 48, 1), conv(48, 64, 5, padding=2)),
        nn.Sequential(conv(cin, 64, 1), conv_same(64, 96, 3, 3), conv_same(96, 96, 3, 3)),
        nn.Sequential(avg_pool(count_padding), conv(cin, pool_proj, 1)),
    )


def reduction_35_to_17(cin: int) -> Branches:
    """Strided convs next to a strided pool (Figure 10); output width 384 + 96 + cin."""
    return Branches(
        conv(cin, 384, 3, stride=2),
        nn.Sequential(conv(cin, 64, 1), conv_same(64, 96, 3, 3), conv(96, 96, 3, stride=2)),
        nn.MaxPool2d(3, 2),
    )


def inception_17(cin: int, mid: int, count_padding: bool = False) -> Branches:
    """17x17 module with 7x7 convs factorised into 1x7 and 7x1; output width 768."""
    return Branches(
        conv(cin, 192, 1),
        nn.Sequential(conv(cin, mid, 1), conv_same(mid, mid, 1, 7), conv_same(mid, 192, 7, 1)),
        nn.Sequential(
            conv(cin, mid, 1),
            conv_same(mid, mid, 7, 1),
            conv_same(mid, mid, 1, 7),
            conv_same(mid, mid, 7, 1),
            conv_same(mid, 192, 1, 7),
        ),
        nn.Sequential(avg_pool(count_padding), conv(cin, 192, 1)),
    )


def reduction_17_to_8(cin: int) -> Branches:
    """Output width 320 + 192 + cin."""
    return Branches(
        nn.Sequential(conv(cin, 192, 1), conv(192, 320, 3, stride=2)),
        nn.Sequential(
            conv(cin, 192, 1),
            conv_same(192, 192, 1, 7),
            conv_same(192, 192, 7, 1),
            conv(192, 192, 3, stride=2),
        ),
        nn.MaxPool2d(3, 2),
    )


def split_1x3_3x1(cin: int, cout: int) -> Branches:
    """Parallel 1x3 and 3x1 convs: the expanded filter bank of Figure 7; output width 2 * cout."""
    return Branches(conv_same(cin, cout, 1, 3), conv_same(cin, cout, 3, 1))


def inception_8(cin: int, count_padding: bool = False) -> Branches:
    """8x8 module; output width 2048."""
    return Branches(
        conv(cin, 320, 1),
        nn.Sequential(conv(cin, 384, 1), split_1x3_3x1(384, 384)),
        nn.Sequential(conv(cin, 448, 1), conv_same(448, 384, 3, 3), split_1x3_3x1(384, 384)),
        nn.Sequential(avg_pool(count_padding), conv(cin, 192, 1)),
    )


class AuxHead(nn.Module):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 average pool, 1x1 and 5x5 convs, linear."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.reduce = conv(cin, 128, 1)
        self.conv = conv(128, 768, 5)
        # The identity at 299x299 inputs, where the 5x5 conv already leaves 1x1.
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = linear_or_identity(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.reduce(self.pool(x)))
        return self.fc(self.flatten(self.global_pool(x)))


class InceptionV3(ClassifierModel):
    """Stem, 35x35 / 17x17 / 8x8 stages of Inception modules, global pool, dropout, linear.

    In training mode with the auxiliary head, `forward` returns {"logits": ..., "aux": ...};
    otherwise (and always in eval mode) the logits tensor alone.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        aux_logits: bool,
        dropout: float,
        torchvision_compat: bool,
    ):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "inception_v3", num_classes, in_channels
        # Smallest input whose 17x17-grid map is still 17 wide, which the auxiliary head's 5x5/3
        # pool then 5x5 conv need (299 is exactly that); without it, 75 leaves 1x1 at the 8x8 grid.
        min_size = 299 if aux_logits else 75
        self.default_cfg = DefaultCfg((in_channels, 299, 299), (min_size, min_size), PAPER, 2016)
        self.num_features = 2048
        self.stem = stem(in_channels)
        count_padding = torchvision_compat  # torchvision's average pools count the zero padding
        self.stage_35 = nn.Sequential(
            inception_35(192, 32, count_padding),
            inception_35(256, 64, count_padding),
            inception_35(288, 64, count_padding),
        )
        self.stage_17 = nn.Sequential(
            reduction_35_to_17(288),
            *(inception_17(768, mid, count_padding) for mid in GRID_17_WIDTHS),
        )
        self.aux = AuxHead(768, num_classes) if aux_logits else None
        self.stage_8 = nn.Sequential(
            reduction_17_to_8(768),
            inception_8(1280, count_padding),
            inception_8(2048, count_padding),
        )
        self.head = GlobalPoolHead(2048, num_classes, dropout)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                _trunc_normal(module, 0.1)
        if self.aux is not None:
            _trunc_normal(self.aux.conv[0], 0.01)
            if isinstance(self.aux.fc, nn.Linear):
                _trunc_normal(self.aux.fc, 0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        x = self.stage_17(self.stage_35(self.stem(x)))
        aux = self.aux(x) if self.aux is not None and self.training else None
        logits = self.forward_head(self.stage_8(x))
        return logits if aux is None else {"logits": logits, "aux": aux}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_8(self.stage_17(self.stage_35(self.stem(x))))

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux is not None:
            self.aux.fc = linear_or_identity(768, num_classes)


def _trunc_normal(module: nn.Conv2d | nn.Linear, std: float) -> None:
    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


@register_model
def inception_v3(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    aux_logits: bool = True,
    dropout: float = 0.2,
    torchvision_compat: bool = False,
) -> InceptionV3:
    """Inception-v3 (Szegedy et al., 2016), 299x299 input, optional auxiliary classifier.

    torchvision_compat: average pools that count the zero padding, as torchvision's (whose
        weights then give torchvision's outputs), instead of TensorFlow's that leave it out.
    """
    return InceptionV3(num_classes, in_channels, aux_logits, dropout, torchvision_compat)
