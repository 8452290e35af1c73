"""ResNet, pre-activation ResNet (v2) and ResNeXt, the ImageNet configurations.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (2015), `resnet*`: a 7x7/2
conv and a 3x3/2 max pool, then four stages of residual blocks at 64, 128, 256 and 512 "planes",
each stage after the first halving the resolution in its first block. ResNet-18/34 use basic
blocks (two 3x3 convs), ResNet-50/101/152 bottleneck blocks (1x1 reduce, 3x3, 1x1 expanding to
4 x planes). Every conv is followed by BatchNorm; the block adds its shortcut and then applies
ReLU. Where a block changes width or resolution the shortcut is a 1x1 conv + BN projection
(option B of the paper), elsewhere the identity.

Where a bottleneck strides: by default in its 3x3 conv, as in the common reference
implementations (fb.resnet.torch, torchvision; "ResNet v1.5"), which is a little more accurate.
The 2015 paper strides the first 1x1 conv instead; `stride_in_1x1=True` restores that (the
ResNeXt paper itself strides the 3x3). Parameter counts are the same either way.

He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks" (2016), `preact_resnet*`: the
same convs, but every conv of a residual branch is preceded by BN-ReLU and nothing follows the
addition, so the shortcut path stays a pure identity. A projection shortcut (a bare 1x1 conv)
takes the pre-activated input; the first block reuses the activation after the stem conv (the
paper's appendix) and a final BN-ReLU follows the last stage.

Xie, Girshick, Dollár, Tu, He, "Aggregated Residual Transformations for Deep Neural Networks"
(2017), `resnext*`: bottleneck ResNets whose 3x3 conv is grouped, 32 groups ("cardinality") of
4 or 8 channels each at the first stage ("32x4d", "32x8d"), the width doubling per stage.

Weights start as in the reference implementations: Kaiming-normal convs (fan_out, ReLU gain),
BatchNorm weight 1 and bias 0, classifier bias 0. `zero_init_residual=True` (Goyal et al., 2017,
"Accurate, Large Minibatch SGD") zeroes the last BatchNorm weight of every residual branch (the
last conv's weight in a pre-activation branch, which ends in a conv), so each block starts as
its shortcut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.registry import register_model

RESNET_PAPER = ("Deep Residual Learning for Image Recognition (He et al.)", 2015)
PREACT_PAPER = ("Identity Mappings in Deep Residual Networks (He et al.)", 2016)
RESNEXT_PAPER = ("Aggregated Residual Transformations for Deep Neural Networks (Xie et al.)", 2017)

STEM_CHANNELS = 64
STAGE_PLANES = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
# blocks per stage by depth, Table 1 of the 2015 paper
STAGE_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
MIN_INPUT_SIZE = 32  # stem /4, then three stride-2 stages


@dataclass(frozen=True)
class BlockSpec:
    """How every residual block of one network is built."""

    bottleneck: bool
    preact: bool = False
    groups: int = 1  # ResNeXt cardinality
    width_per_group: int = 64  # channels per group of the 3x3 conv at the first stage
    stride_in_1x1: bool = False

    def out_channels(self, planes: int) -> int:
        return planes * BOTTLENECK_EXPANSION if self.bottleneck else planes

    def branch_convs(
        self, in_channels: int, planes: int, stride: int
    ) -> list[tuple[int, int, int, int, int]]:
        """The branch's convs as (in, out, kernel, stride, groups), first to last."""
        if not self.bottleneck:
            return [(in_channels, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
        width = planes * self.width_per_group // 64 * self.groups
        stride_1x1, stride_3x3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        return [
            (in_channels, width, 1, stride_1x1, 1),
            (width, width, 3, stride_3x3, self.groups),
            (width, self.out_channels(planes), 1, 1, 1),
        ]


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False
    )


class ResidualBlock(nn.Module):
    """ReLU(branch(x) + shortcut(x)), each branch conv followed by BN (the 2015 paper)."""

    def __init__(self, spec: BlockSpec, in_channels: int, planes: int, stride: int):
        super().__init__()
        self.out_channels = spec.out_channels(planes)
        convs = spec.branch_convs(in_channels, planes, stride)
        self.branch = nn.Sequential(
            *(
                ConvNormAct(cin, cout, k, s, k // 2, groups=g, act=index < len(convs) - 1)
                for index, (cin, cout, k, s, g) in enumerate(convs)
            )
        )
        if stride == 1 and in_channels == self.out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvNormAct(in_channels, self.out_channels, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.branch[-1][1].weight)  # the BatchNorm that ends the branch


class PreActBlock(nn.Module):
    """branch(BN-ReLU(x)) + shortcut, BN-ReLU before every conv (the 2016 paper).

    The identity shortcut takes the raw input; a projection takes the pre-activated one, which
    it shares with the branch. `preactivate=False` for the network's first block, whose input
    the stem has already activated.
    """

    def __init__(
        self, spec: BlockSpec, in_channels: int, planes: int, stride: int, preactivate: bool
    ):
        super().__init__()
        self.out_channels = spec.out_channels(planes)
        self.preact = bn_relu(in_channels) if preactivate else nn.Identity()
        layers: list[nn.Module] = []
        for index, (cin, cout, k, s, g) in enumerate(
            spec.branch_convs(in_channels, planes, stride)
        ):
            if index > 0:
                layers.append(bn_relu(cin))
            layers.append(_conv(cin, cout, k, s, g))
        self.branch = nn.Sequential(*layers)
        self.projects = stride != 1 or in_channels != self.out_channels
        self.shortcut = (
            _conv(in_channels, self.out_channels, 1, stride, 1) if self.projects else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        shortcut = self.shortcut(activated) if self.projects else x
        return self.branch(activated) + shortcut

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.branch[-1].weight)  # the conv that ends the branch


class ResNet(ClassifierModel):
    """Stem (7x7/2 conv-BN-ReLU, 3x3/2 max pool), four residual stages, global pool, linear."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        depths: tuple[int, ...],
        spec: BlockSpec,
        paper: tuple[str, int],
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.name, self.num_classes, self.in_channels = name, num_classes, in_channels
        self.default_cfg = DefaultCfg(
            (in_channels, 224, 224), (MIN_INPUT_SIZE, MIN_INPUT_SIZE), *paper
        )
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, STEM_CHANNELS, 7, 2, 3), nn.MaxPool2d(3, 2, 1)
        )
        channels = STEM_CHANNELS
        stages = []
        for stage_index, (planes, depth) in enumerate(zip(STAGE_PLANES, depths, strict=True)):
            blocks = []
            for block_index in range(depth):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                if spec.preact:
                    first = stage_index == 0 and block_index == 0
                    block = PreActBlock(spec, channels, planes, stride, preactivate=not first)
                else:
                    block = ResidualBlock(spec, channels, planes, stride)
                blocks.append(block)
                channels = block.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # pre-activation leaves the last addition unnormalised, so one more BN-ReLU closes it
        self.final_act = bn_relu(channels) if spec.preact else nn.Identity()
        self.num_features = channels
        self.head = GlobalPoolHead(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (ResidualBlock, PreActBlock)):
                    module.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.stages(self.stem(x)))


# name: (depth, block, paper)
ARCHITECTURES = {
    "resnet18": (18, BlockSpec(bottleneck=False), RESNET_PAPER),
    "resnet34": (34, BlockSpec(bottleneck=False), RESNET_PAPER),
    "resnet50": (50, BlockSpec(bottleneck=True), RESNET_PAPER),
    "resnet101": (101, BlockSpec(bottleneck=True), RESNET_PAPER),
    "resnet152": (152, BlockSpec(bottleneck=True), RESNET_PAPER),
    "preact_resnet18": (18, BlockSpec(bottleneck=False, preact=True), PREACT_PAPER),
    "preact_resnet34": (34, BlockSpec(bottleneck=False, preact=True), PREACT_PAPER),
    "preact_resnet50": (50, BlockSpec(bottleneck=True, preact=True), PREACT_PAPER),
    "preact_resnet101": (101, BlockSpec(bottleneck=True, preact=True), PREACT_PAPER),
    "preact_resnet152": (152, BlockSpec(bottleneck=True, preact=True), PREACT_PAPER),
    "resnext50_32x4d": (
        50,
        BlockSpec(bottleneck=True, groups=32, width_per_group=4),
        RESNEXT_PAPER,
    ),
    "resnext101_32x8d": (
        101,
        BlockSpec(bottleneck=True, groups=32, width_per_group=8),
        RESNEXT_PAPER,
    ),
}


def _resnet(
    name: str,
    num_classes: int,
    in_channels: int,
    zero_init_residual: bool,
    stride_in_1x1: bool = False,
) -> ResNet:
    depth, spec, paper = ARCHITECTURES[name]
    spec = replace(spec, stride_in_1x1=stride_in_1x1)
    return ResNet(
        name, num_classes, in_channels, STAGE_DEPTHS[depth], spec, paper, zero_init_residual
    )


@register_model
def resnet18(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2) per stage."""
    return _resnet("resnet18", num_classes, in_channels, zero_init_residual)


@register_model
def resnet34(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34: basic blocks, (3, 4, 6, 3) per stage."""
    return _resnet("resnet34", num_classes, in_channels, zero_init_residual)


@register_model
def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3) per stage."""
    return _resnet("resnet50", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def resnet101(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-101: bottleneck blocks, (3, 4, 23, 3) per stage."""
    return _resnet("resnet101", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def resnet152(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNet-152: bottleneck blocks, (3, 8, 36, 3) per stage."""
    return _resnet("resnet152", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def preact_resnet18(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """Pre-activation ResNet-18: basic blocks, (2, 2, 2, 2) per stage."""
    return _resnet("preact_resnet18", num_classes, in_channels, zero_init_residual)


@register_model
def preact_resnet34(
    num_classes: int = 1000, in_channels: int = 3, *, zero_init_residual: bool = False
) -> ResNet:
    """Pre-activation ResNet-34: basic blocks, (3, 4, 6, 3) per stage."""
    return _resnet("preact_resnet34", num_classes, in_channels, zero_init_residual)


@register_model
def preact_resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """Pre-activation ResNet-50: bottleneck blocks, (3, 4, 6, 3) per stage."""
    return _resnet("preact_resnet50", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def preact_resnet101(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """Pre-activation ResNet-101: bottleneck blocks, (3, 4, 23, 3) per stage."""
    return _resnet("preact_resnet101", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def preact_resnet152(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """Pre-activation ResNet-152, the paper's ImageNet model: (3, 8, 36, 3) bottlenecks."""
    return _resnet("preact_resnet152", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def resnext50_32x4d(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNeXt-50 (32x4d): ResNet-50 with 32 groups of 4 channels in the first stage's 3x3."""
    return _resnet("resnext50_32x4d", num_classes, in_channels, zero_init_residual, stride_in_1x1)


@register_model
def resnext101_32x8d(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    stride_in_1x1: bool = False,
    zero_init_residual: bool = False,
) -> ResNet:
    """ResNeXt-101 (32x8d): ResNet-101 with 32 groups of 8 channels in the first 3x3s."""
    return _resnet("resnext101_32x8d", num_classes, in_channels, zero_init_residual, stride_in_1x1)
