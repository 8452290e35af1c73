"""VGG: published counts of the eight variants, width scaling, d2l's small VGG-11, small inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError, InputShapeError
from cnnlab.models import create_model, model_options

# torchvision's VGGs (the published reference for the ImageNet configurations).
PUBLISHED = {
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}
# Table 1 of the paper, written out: the conv channels of configurations A, B, D, E ("M": pool).
TABLE_1 = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
              "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}  # fmt: skip


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_count(arch, divisor=1, hidden=4096, in_channels=3, classes=1000, bn=False) -> int:
    widths = [c // divisor for c in TABLE_1[arch] if c != "M"]
    total, cin = 0, in_channels
    for cout in widths:
        total += 9 * cin * cout + cout + (2 * cout if bn else 0)  # 3x3 weights, bias, BN affine
        cin = cout
    return total + (cin * 49 + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * classes


def build_on_meta(name: str, *args, **options) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, *args, **options)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """VGG-11 at 1/16 width with a 256-wide classifier: small enough to run for real."""
    torch.manual_seed(0)
    return create_model("vgg11", 10, 1, width_multiplier=1 / 16, scale_classifier=True)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_counts(name):
    model = build_on_meta(name)
    assert count(model) == PUBLISHED[name]
    arch = name.removesuffix("_bn")
    assert count(model) == expected_count(arch, bn=name.endswith("_bn"))
    assert model(torch.zeros(2, 3, 224, 224, device="meta")).shape == (2, 1000)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_layout_follows_table_1(name):
    model = build_on_meta(name)
    arch, bn = name.removesuffix("_bn"), name.endswith("_bn")
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert widths == [c for c in TABLE_1[arch] if c != "M"]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == (len(widths) if bn else 0)
    if bn:  # conv -> BN -> ReLU
        types = [type(m).__name__ for m in model.features]
        starts = [i for i, t in enumerate(types) if t == "Conv2d"]
        assert all(types[i + 1 : i + 3] == ["BatchNorm2d", "ReLU"] for i in starts)


def test_d2l_quarter_width_vgg11_on_fashion_mnist_sized_input():
    # d2l 8.2: conv_arch ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)) with channels // 4,
    # 4096-wide FC layers kept, 10 classes, 1x224x224 input.
    model = build_on_meta("vgg11", 10, 1, width_multiplier=0.25)
    widths = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert widths == [16, 32, 64, 64, 128, 128, 128, 128]
    assert count(model) == expected_count("vgg11", 4, in_channels=1, classes=10) == 43_093_322
    assert model(torch.zeros(2, 1, 224, 224, device="meta")).shape == (2, 10)
    assert model.num_features == 4096


def test_half_width_quarters_the_conv_weights():
    full = build_on_meta("vgg16", in_channels=64)  # 64 inputs so every layer scales alike
    half = build_on_meta("vgg16", in_channels=32, width_multiplier=0.5, scale_classifier=True)
    assert count(half) == expected_count("vgg16", 2, hidden=2048, in_channels=32)
    conv_full = sum(m.weight.numel() for m in full.features if isinstance(m, nn.Conv2d))
    conv_half = sum(m.weight.numel() for m in half.features if isinstance(m, nn.Conv2d))
    assert conv_half * 4 == conv_full
    assert half.num_features == 2048 and half.hidden[0].in_features == 256 * 7 * 7


def test_scale_classifier_needs_the_flag():
    kept = build_on_meta("vgg13_bn", width_multiplier=0.25)
    scaled = build_on_meta("vgg13_bn", width_multiplier=0.25, scale_classifier=True)
    assert kept.hidden[0].out_features == 4096
    assert scaled.hidden[0].out_features == scaled.num_features == 1024
    assert count(scaled) == expected_count("vgg13", 4, hidden=1024, bn=True)


def test_options_and_invalid_width():
    for name in PUBLISHED:
        assert model_options(name) == {"width_multiplier": 1.0, "scale_classifier": False}
    with pytest.raises(CnnlabError, match="width_multiplier"):
        build_on_meta("vgg11", width_multiplier=0)


def test_glorot_initialisation(tiny):
    for layer in tiny.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert layer.weight.abs().max() <= bound
            if layer.weight.numel() > 1000:  # uniform on [-b, b]: std b / sqrt(3)
                assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert torch.count_nonzero(layer.bias) == 0


def test_minimum_input_and_refusal_below(tiny):
    tiny.eval()
    assert tiny(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert tiny.default_cfg.min_input_size == (32, 32)
    assert tiny.default_cfg.input_size == (1, 224, 224)
    with pytest.raises(InputShapeError, match=r"vgg11.*32x32.*31x31"):
        tiny(torch.randn(2, 1, 31, 31))


def test_dropout_active_only_in_training(tiny):
    x = torch.randn(2, 1, 64, 64)
    tiny.train()
    assert not torch.equal(tiny(x), tiny(x))
    tiny.eval()
    assert torch.equal(tiny(x), tiny(x))


def test_batch_norm_variant_runs_small():
    torch.manual_seed(0)
    model = create_model("vgg19_bn", 10, 1, width_multiplier=1 / 32, scale_classifier=True)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_no_classifier_pre_logits_and_reset(tiny):
    tiny.eval()
    x = torch.randn(2, 1, 32, 32)
    pooled = tiny.forward_head(tiny.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 256)
    tiny.reset_classifier(0)
    try:
        torch.testing.assert_close(tiny(x), pooled)
        tiny.reset_classifier(3)
        assert tiny(x).shape == (2, 3) and tiny.num_classes == 3
        assert torch.count_nonzero(tiny.fc.bias) == 0
    finally:
        tiny.reset_classifier(10)
    headless = build_on_meta("vgg16", num_classes=0)
    assert headless(torch.zeros(1, 3, 32, 32, device="meta")).shape == (1, 4096)
