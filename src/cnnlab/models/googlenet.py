"""GoogLeNet (Inception v1), the ILSVRC 2014 winner.

Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich, "Going Deeper with
Convolutions" (CVPR 2015). A stem of plain convs and max pools, nine Inception modules in three
stages (3a-3b, 4a-4e, 5a-5b) separated by 3x3/2 max pools, then global average pooling, dropout
and one linear classifier. Every Inception module runs four branches side by side and concatenates
them: a 1x1 conv, a 1x1 reduction followed by a 3x3 conv, a 1x1 reduction followed by a 5x5 conv,
and a 3x3/1 max pool followed by a 1x1 projection. All max pools round up (Caffe's ceil mode), which
gives the paper's map sizes 112-56-28-14-7 at 224x224.

The defaults follow the common reference implementation (torchvision's `googlenet`, 6,624,904
parameters without auxiliary heads) in two departures from the paper: BatchNorm (eps 0.001) after
every conv, and a 3x3 instead of a 5x5 kernel in the "5x5" branch. The paper's own network is
`googlenet(batch_norm=False, large_branch_kernel=5, lrn=True, aux_logits=True)`: biased convs
without BatchNorm, true 5x5 kernels, and local response normalisation after the first max pool and
after the 3x3 conv of the stem.

torchvision departs a third time, with a 2x2/2 max pool after 4e where the paper has 3x3/2 (the
same 7x7 map at 224x224 but other values; one row and column more where 4e's map is odd).
`torchvision_compat=True` takes that pool too, and then computes exactly what torchvision's
`googlenet` computes, so that its weights give its outputs: every other layer already matches,
the auxiliary heads included. Dropout rates stay this model's options (torchvision's: 0.2, and
0.7 in the auxiliary heads); they act in training only. torchvision's `transform_input`, which
rescales ImageNet-normalised inputs to mean = std = 0.5 inside its model for its pretrained
weights, is no layer here: a cnnlab model takes inputs normalised as its weights file's metadata
says (0.5 for those weights, imported).

With `aux_logits=True` two auxiliary classifiers sit on the outputs of 4a and 4d, as in the paper
(average pool to 4x4 -> 1x1 conv 128 -> FC 1024 -> dropout 0.7 -> linear). In training mode
`forward` then returns {"logits", "aux1", "aux2"}; in eval mode only the logits, since the paper
discards the auxiliary heads at inference time.

Weights start as in the reference implementation: a normal with std 0.01 truncated to +-2 std
for conv and linear weights (torchvision's `scipy.stats.truncnorm(-2, 2, scale=0.01)`), BatchNorm
scale 1 and shift 0; biases start at 0.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from cnnlab.errors import UnknownModelError
from cnnlab.models.base import ClassifierModel, DefaultCfg, linear_or_identity
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.registry import register_model

PAPER = "Going Deeper with Convolutions (Szegedy et al.)"

# Table 1 of the paper: input width, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_CFGS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}
POOL_AFTER = ("3b", "4e")  # the 3x3/2 max pools between stages 3, 4 and 5
# The options `torchvision_compat` requires: torchvision's network has BatchNorm, 3x3 kernels in
# the "5x5" branch and no LRN.
TORCHVISION_FORM = {"batch_norm": True, "large_branch_kernel": 3, "lrn": False}
AUX_TAPS = {"inception4a": "aux1", "inception4d": "aux2"}  # block output -> auxiliary head
NUM_FEATURES = 1024


class Inception(nn.Module):
    """Four parallel branches concatenated along the channels."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch_large_reduce: int,
        ch_large: int,
        pool_proj: int,
        large_kernel: int,
        conv: partial[ConvNormAct],
    ):
        super().__init__()
        self.branch1x1 = conv(in_channels, ch1x1, 1)
        self.branch3x3 = nn.Sequential(
            conv(in_channels, ch3x3_reduce, 1), conv(ch3x3_reduce, ch3x3, 3, padding=1)
        )
        self.branch_large = nn.Sequential(
            conv(in_channels, ch_large_reduce, 1),
            conv(ch_large_reduce, ch_large, large_kernel, padding=large_kernel // 2),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv(in_channels, pool_proj, 1)
        )
        self.out_channels = ch1x1 + ch3x3 + ch_large + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch_large, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class AuxHead(nn.Module):
    """An auxiliary classifier on an intermediate map (the paper's section 5).

    The paper pools 5x5/3, which turns the 14x14 map of a 224x224 input into 4x4; an adaptive
    pool to 4x4 is the same there and also takes the smaller maps of smaller inputs.
    """

    def __init__(
        self, in_channels: int, num_classes: int, conv: partial[ConvNormAct], dropout: float
    ):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = conv(in_channels, 128, 1)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = linear_or_identity(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.conv(self.pool(x)))
        return self.fc2(self.dropout(self.relu(self.fc1(x))))

    def reset(self, num_classes: int) -> None:
        self.fc2 = linear_or_identity(1024, num_classes)


class GoogLeNet(ClassifierModel):
    """The stem, Inception stages 3-5 with optional auxiliary heads, and a global-pool head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        batch_norm: bool,
        large_branch_kernel: int,
        lrn: bool,
        aux_logits: bool,
        dropout: float,
        aux_dropout: float,
        torchvision_compat: bool,
    ):
        super().__init__()
        self.name, self.num_classes, self.in_channels = "googlenet", num_classes, in_channels
        self.default_cfg = DefaultCfg((in_channels, 224, 224), (32, 32), PAPER, 2015)
        self.num_features = NUM_FEATURES
        self.aux_logits = aux_logits
        conv = partial(ConvNormAct, norm=batch_norm, eps=1e-3)

        layers: list[tuple[str, nn.Module]] = [
            ("conv1", conv(in_channels, 64, 7, stride=2, padding=3)),
            ("pool1", _max_pool()),
            *([("lrn1", _lrn())] if lrn else []),
            ("conv2", conv(64, 64, 1)),
            ("conv3", conv(64, 192, 3, padding=1)),
            *([("lrn2", _lrn())] if lrn else []),
            ("pool2", _max_pool()),
        ]
        for block, cfg in INCEPTION_CFGS.items():
            layers.append((f"inception{block}", Inception(*cfg, large_branch_kernel, conv)))
            if block in POOL_AFTER:
                # torchvision pools 2x2/2 after 4e, the paper 3x3/2 (module docstring)
                kernel = 2 if torchvision_compat and block == "4e" else 3
                layers.append((f"pool{block[0]}", _max_pool(kernel)))
        self.features = nn.Sequential(OrderedDict(layers))

        self.aux = nn.ModuleDict()
        if aux_logits:
            for block, head in AUX_TAPS.items():
                width = self.features.get_submodule(block).out_channels
                self.aux[head] = AuxHead(width, num_classes, conv, aux_dropout)
        self.head = GlobalPoolHead(NUM_FEATURES, num_classes, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.02, b=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        self.check_input(x)
        # The auxiliary heads only shape the training loss; inference skips them.
        with_aux = self.aux_logits and self.training
        x, aux = self._run_features(x, with_aux)
        logits = self.forward_head(x)
        return {"logits": logits, **aux} if with_aux else logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._run_features(x, with_aux=False)[0]

    def _run_features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aux: dict[str, torch.Tensor] = {}
        for name, layer in self.features.named_children():
            x = layer(x)
            if with_aux and name in AUX_TAPS:
                aux[AUX_TAPS[name]] = self.aux[AUX_TAPS[name]](x)
        return x, aux

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        for head in self.aux.values():
            head.reset(num_classes)


def _max_pool(kernel: int = 3) -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel, stride=2, ceil_mode=True)


def _lrn() -> nn.LocalResponseNorm:
    # Caffe's LRN, as in the paper's model: 5 channels, alpha 1e-4 (divided by the size), beta 0.75.
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


@register_model
def googlenet(
    num_classes: int = 1000,
    in_channels: int = 3,
    *,
    batch_norm: bool = True,
    large_branch_kernel: int = 3,
    lrn: bool = False,
    aux_logits: bool = False,
    dropout: float = 0.4,
    aux_dropout: float = 0.7,
    torchvision_compat: bool = False,
) -> GoogLeNet:
    """GoogLeNet; the defaults are the reference implementation (6,624,904 parameters).

    batch_norm: BatchNorm (eps 0.001) after every conv, convs without bias, as the reference
        implementation; False gives the paper's biased convs without normalisation.
    large_branch_kernel: kernel of the "5x5" branch: 3 as the reference implementation, 5 as
        the paper.
    lrn: local response normalisation after the first max pool and after the stem's 3x3 conv,
        as the paper.
    aux_logits: the two auxiliary classifiers on 4a and 4d; in training mode forward then
        returns {"logits", "aux1", "aux2"}.
    dropout: before the final classifier (0.4 in the paper).
    aux_dropout: inside the auxiliary classifiers (0.7 in the paper).
    torchvision_compat: torchvision's 2x2/2 max pool after 4e instead of the paper's 3x3/2, so
        that torchvision's weights give torchvision's outputs; needs the other options'
        defaults (torchvision's network).

    `batch_norm=False, large_branch_kernel=5, lrn=True` is the paper's network.
    """
    if large_branch_kernel not in (3, 5):
        raise UnknownModelError(
            f"googlenet option large_branch_kernel must be 3 or 5, got {large_branch_kernel!r}"
        )
    if torchvision_compat:
        given = {"batch_norm": batch_norm, "large_branch_kernel": large_branch_kernel, "lrn": lrn}
        conflicts = [
            f"{key}={given[key]!r}" for key in given if given[key] != TORCHVISION_FORM[key]
        ]
        if conflicts:
            required = ", ".join(f"{key}={value!r}" for key, value in TORCHVISION_FORM.items())
            raise UnknownModelError(
                f"googlenet option torchvision_compat=True builds torchvision's network, which "
                f"has {required}; got {', '.join(conflicts)}"
            )
    return GoogLeNet(
        num_classes,
        in_channels,
        batch_norm,
        large_branch_kernel,
        lrn,
        aux_logits,
        dropout,
        aux_dropout,
        torchvision_compat,
    )
