"""DenseNet-BC and d2l's DenseNet: published sizes, channel growth, options and interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError, UnknownModelError
from cnnlab.models import create_model, model_options
from cnnlab.models.densenet import DenseBlock, Transition

# torchvision / the paper's Torch models, 1000 classes and RGB input
PUBLISHED = {
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
# final width: stem 2k, each block adds layers * k, each transition halves
FEATURES = {
    "densenet121": 1024,  # 64+6*32=256 -> 128+12*32=512 -> 256+24*32=1024 -> 512+16*32
    "densenet161": 2208,  # 96+6*48=384 -> 192+12*48=768 -> 384+36*48=2112 -> 1056+24*48
    "densenet169": 1664,  # 256 -> 128+384=512 -> 256+32*32=1280 -> 640+32*32
    "densenet201": 1920,  # 256 -> 512 -> 256+48*32=1792 -> 896+32*32
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def d2l_count(in_channels: int, num_classes: int, growth: int = 32, convs: int = 4) -> int:
    """d2l's DenseNet from its definition: every conv keeps its bias, BN has weight and bias."""
    total = in_channels * 64 * 7 * 7 + 64 + 2 * 64  # stem conv + BN
    channels = 64
    for block in range(4):
        for layer in range(convs):
            width = channels + layer * growth
            total += 2 * width + width * growth * 3 * 3 + growth  # BN-ReLU-3x3 conv
        channels += convs * growth
        if block < 3:
            total += 2 * channels + channels * (channels // 2) + channels // 2  # transition
            channels //= 2
    return total + 2 * channels + channels * num_classes + num_classes  # final BN, linear


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_counts(name):
    model = build_on_meta(name)
    assert count(model) == PUBLISHED[name]
    assert model.num_features == FEATURES[name]


def test_d2l_parameter_count():
    assert d2l_count(1, 10) == 758_226  # checked by hand: 3,328 stem + 754,898 rest
    assert count(create_model("densenet_d2l", num_classes=10, in_channels=1)) == 758_226
    assert count(build_on_meta("densenet_d2l")) == d2l_count(3, 1000)
    assert count(build_on_meta("densenet_d2l", growth_rate=12, convs_per_block=6)) == d2l_count(
        3, 1000, growth=12, convs=6
    )


@pytest.mark.parametrize("name", [*PUBLISHED, "densenet_d2l"])
def test_imagenet_forward_on_meta(name):
    model = build_on_meta(name)
    assert model.default_cfg.min_input_size == (32, 32)
    assert model.default_cfg.year == 2017
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert model.forward_features(x).shape == (1, model.num_features, 7, 7)
    assert model(x).shape == (1, 1000)


def test_default_input_sizes():
    assert build_on_meta("densenet121").default_cfg.input_size == (3, 224, 224)
    assert build_on_meta("densenet_d2l", in_channels=1).default_cfg.input_size == (1, 96, 96)


def test_d2l_fashion_mnist_forward():
    model = create_model("densenet_d2l", num_classes=10, in_channels=1)
    assert model.num_features == 248  # 64+128=192 -> 96+128=224 -> 112+128=240 -> 120+128
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("name", ["densenet121", "densenet_d2l"])
def test_minimum_input_size_train_and_backward(name):
    model = create_model(name, num_classes=3, in_channels=1).train()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(InputShapeError, match=rf"{name}.*32x32.*31x31"):
        model.eval()(torch.randn(2, 1, 31, 31))


@pytest.mark.parametrize("name", ["densenet161", "densenet201"])
def test_minimum_input_size_on_meta(name):
    model = build_on_meta(name, num_classes=3)
    assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 3)
    with pytest.raises(InputShapeError, match=rf"{name}.*32x32.*31x31"):
        model(torch.empty(2, 3, 31, 31, device="meta"))


def test_dense_block_grows_by_layers_times_growth():
    block = DenseBlock(10, num_layers=3, growth_rate=5)
    assert block.out_channels == 10 + 3 * 5
    x = torch.randn(2, 10, 6, 6)
    out = block(x)
    assert out.shape == (2, 25, 6, 6)
    assert torch.equal(out[:, :10], x)  # the input is passed on untouched


@pytest.mark.parametrize(
    "name, widths",
    [
        ("densenet121", [(64, 256), (128, 512), (256, 1024), (512, 1024)]),
        ("densenet_d2l", [(64, 192), (96, 224), (112, 240), (120, 248)]),
    ],
)
def test_block_and_transition_widths(name, widths):
    model = build_on_meta(name)
    blocks = [m for m in model.stages if isinstance(m, DenseBlock)]
    assert [(b.in_channels, b.out_channels) for b in blocks] == widths
    transitions = [m for m in model.stages if isinstance(m, Transition)]
    assert len(transitions) == 3
    for transition, (_, width) in zip(transitions, widths, strict=False):
        conv = transition[2]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (
            width,
            width // 2,
            (1, 1),
        )
        assert isinstance(transition[-1], nn.AvgPool2d)


def test_layer_kinds():
    bc_layer = build_on_meta("densenet121").stages[0].layers[0]
    convs = [m for m in bc_layer if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.bias is None) for c in convs] == [
        (128, (1, 1), True),  # bottleneck: 4 * growth
        (32, (3, 3), True),
    ]
    assert isinstance(bc_layer[0], nn.BatchNorm2d)  # pre-activated
    d2l_layer = build_on_meta("densenet_d2l").stages[0].layers[0]
    convs = [m for m in d2l_layer if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.bias is None) for c in convs] == [(32, (3, 3), False)]


def test_no_classifier_and_reset():
    model = create_model("densenet_d2l", num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 248)
        model.reset_classifier(5)
        assert model.num_classes == 5
        assert model(x).shape == (2, 5)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 248)
    assert build_on_meta("densenet161", num_classes=0)(
        torch.empty(2, 3, 32, 32, device="meta")
    ).shape == (2, 2208)


def test_options():
    assert model_options("densenet121") == {"drop_rate": 0.0}
    assert model_options("densenet_d2l") == {
        "growth_rate": 32,
        "convs_per_block": 4,
        "drop_rate": 0.0,
    }
    with pytest.raises(UnknownModelError, match="growth_rate"):
        create_model("densenet121", growth_rate=12)
    with pytest.raises(UnknownModelError, match="growth_rate"):
        create_model("densenet_d2l", growth_rate=0)
    narrow = build_on_meta("densenet_d2l", growth_rate=16, convs_per_block=2)
    assert narrow.num_features == 68  # 64+2*16=96 -> 48+32=80 -> 40+32=72 -> 36+32=68


def test_drop_rate_after_every_conv_but_the_stem():
    assert not any(isinstance(m, nn.Dropout) for m in build_on_meta("densenet121").modules())
    model = build_on_meta("densenet121", drop_rate=0.2)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(dropouts) == len(convs) - 1 == 2 * (6 + 12 + 24 + 16) + 3
    assert all(m.p == 0.2 for m in dropouts)


def test_init():
    model = create_model("densenet121")
    conv = model.stages[6].layers[0][2]  # 1x1, 1024 -> 128 at the start of block 4
    assert conv.in_channels == 512 and conv.out_channels == 128
    assert conv.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.05)  # fan_out
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert torch.all(model.head.fc.bias == 0)
    d2l = create_model("densenet_d2l", num_classes=10, in_channels=1)
    stem = d2l.stem[0]
    bound = (6 / (1 * 49 + 64 * 49)) ** 0.5  # Xavier-uniform
    assert stem.weight.abs().max().item() <= bound
    assert stem.weight.abs().max().item() > 0.9 * bound
    assert torch.all(stem.bias == 0) and torch.all(d2l.head.fc.bias == 0)
