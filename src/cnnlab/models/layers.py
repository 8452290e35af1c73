"""Building blocks shared by several model families."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cnnlab.models.base import linear_or_identity


class FixedSizePool(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling to a fixed size, before a fully connected head, that passes an
    input already of that size through untouched. At the design input it is the identity, yet
    PyTorch would still run a pooling pass forward and backward: 5% of a LeNet training step on
    this project's 2-core CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == _pair(self.output_size):
            return x
        return super().forward(x)


class ConvNormAct(nn.Sequential):
    """Conv -> BatchNorm -> ReLU, the unit of every Inception-style network.

    With `norm=False` the conv keeps its bias and no BatchNorm follows (the pre-BN papers).
    `kernel_size`, `stride` and `padding` may be ints or (h, w) pairs for factorised 1xn convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        norm: bool = True,
        eps: float = 1e-5,
        act: bool = True,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=not norm,
            )
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels, eps=eps))
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class GlobalPoolHead(nn.Module):
    """Global average pooling -> flatten -> dropout -> linear, the head of most modern CNNs."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = linear_or_identity(num_features, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.flatten(self.pool(x)))
        return x if pre_logits else self.fc(x)

    def reset(self, num_classes: int) -> None:
        self.fc = linear_or_identity(self.num_features, num_classes)
