"""The interface every cnnlab model shares, after timm's.

`forward_features(x)` maps an image batch to the last feature map, `forward_head(x)` maps that
to logits (or to pooled features with `pre_logits=True`), `reset_classifier(n)` swaps the final
layer, `num_features` is the width the classifier sees, and `default_cfg` says which input the
model was designed for and where it comes from. `forward` refuses inputs the network cannot
take with a message naming the model, before any shape error deep inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import InputShapeError


@dataclass(frozen=True)
class DefaultCfg:
    """Where a model comes from and which inputs it takes."""

    input_size: tuple[int, int, int]  # (C, H, W) the model was designed for
    min_input_size: tuple[int, int]  # smallest (H, W) every layer still fits
    paper: str
    year: int


class ClassifierModel(nn.Module):
    """Base class: subclasses set `name`, `default_cfg`, `num_features` and implement
    `forward_features`, `forward_head` and `reset_classifier`."""

    name: str
    default_cfg: DefaultCfg
    num_features: int
    in_channels: int
    num_classes: int

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits, or the pooled features with `pre_logits`; this default serves the models
        whose `head` is a `layers.GlobalPoolHead`."""
        return self.head(x, pre_logits=pre_logits)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised final layer for `num_classes` (0: none)."""
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a batch that is not N x in_channels x H x W with H, W at least the minimum."""
        expected = f"N x {self.in_channels} x H x W"
        if x.dim() != 4:
            raise InputShapeError(
                f"{self.name} expects a batch of images {expected}, got a tensor of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise InputShapeError(
                f"{self.name} was built for {self.in_channels} input channel(s) ({expected}), "
                f"got {x.shape[1]} in a batch of shape {tuple(x.shape)}"
            )
        min_h, min_w = self.default_cfg.min_input_size
        height, width = x.shape[-2:]
        if height < min_h or width < min_w:
            raise InputShapeError(
                f"{self.name} needs inputs of at least {min_h}x{min_w} pixels, got {height}x{width}"
            )


class FullyConnectedHeadModel(ClassifierModel):
    """The classic layout (LeNet, AlexNet, VGG): `features`, an adaptive `pool` that is the
    identity at the design input, `flatten`, the `hidden` fully connected layers and the final
    layer `fc`. `analysis.to_fully_convolutional` relies on this layout."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(self.flatten(self.pool(x)))
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = self.new_classifier(num_classes)

    def new_classifier(self, num_classes: int) -> nn.Module:
        """A fresh final layer; models with their own initialisation override this."""
        return linear_or_identity(self.num_features, num_classes)


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """The final classifier layer; `num_classes=0` means no classifier (pooled features out)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
