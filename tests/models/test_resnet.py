"""ResNet, pre-activation ResNet and ResNeXt: published sizes, options and residual behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError, UnknownModelError
from cnnlab.models import create_model, model_options
from cnnlab.models.resnet import PreActBlock, ResidualBlock

ALL = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "preact_resnet18",
    "preact_resnet34",
    "preact_resnet50",
    "preact_resnet101",
    "preact_resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
]

# torchvision / the papers, 1000 classes and RGB input
PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
}

DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (ResidualBlock, PreActBlock))]


def preact_count(depth: int) -> int:
    """Pre-activation ResNet size from the v1 count: the convs and the classifier are the same
    (the v2 projection shortcut is a bare 1x1 conv of the same shape), only BatchNorms move.

    v1 normalises every conv output (stem 64; per block the branch outputs; every projection
    shortcut). v2 normalises every conv input (stem 64, whose activation the first block reuses;
    per block its input and the inputs of its later convs) plus a final BN on the last output.
    Each BN channel holds a weight and a bias.
    """
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    v1_bn = v2_bn = 64
    channels = 64
    for stage, (planes, num_blocks) in enumerate(
        zip((64, 128, 256, 512), DEPTHS[depth], strict=True)
    ):
        out = planes * expansion
        for index in range(num_blocks):
            inner = [planes, planes] if bottleneck else [planes]  # widths entering convs 2..n
            v1_bn += sum(inner) + out
            if index == 0 and (stage > 0 or channels != out):
                v1_bn += out  # projection shortcut BN
            if not (stage == 0 and index == 0):
                v2_bn += channels  # the block's own pre-activation
            v2_bn += sum(inner)
            channels = out
    v2_bn += channels  # final BN
    published_v1 = PUBLISHED[f"resnet{depth}"]
    return published_v1 - 2 * v1_bn + 2 * v2_bn


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_counts(name):
    assert count(build_on_meta(name)) == PUBLISHED[name]


@pytest.mark.parametrize("depth", DEPTHS)
def test_preact_parameter_counts(depth):
    assert count(build_on_meta(f"preact_resnet{depth}")) == preact_count(depth)


def test_preact_resnet18_count_by_hand():
    # v1 BN channels: 64 + 4*(64+128+256+512) + (128+256+512) = 4800
    # v2 BN channels: 64 + (64) + (128) + (64+128) + (128+128) + (128+256) + (256+256)
    #                 + (256+512) + (512+512) + 512 (final) = 3904
    assert preact_count(18) == 11_689_512 - 2 * 4800 + 2 * 3904 == 11_687_720
    assert count(build_on_meta("preact_resnet18")) == 11_687_720


@pytest.mark.parametrize("name", ALL)
def test_imagenet_forward_on_meta(name):
    model = build_on_meta(name)
    assert model.default_cfg.input_size == (3, 224, 224)
    assert model.default_cfg.min_input_size == (32, 32)
    features = model.forward_features(torch.empty(1, 3, 224, 224, device="meta"))
    assert features.shape == (1, model.num_features, 7, 7)
    assert model(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_d2l_sized_grayscale_forward(name):
    model = create_model(name, num_classes=10, in_channels=1)
    assert model.default_cfg.input_size == (1, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 96)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_minimum_input_size_train_and_backward(name):
    model = create_model(name, num_classes=3, in_channels=1).train()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(InputShapeError, match=rf"{name}.*32x32.*31x31"):
        model.eval()(torch.randn(2, 1, 31, 31))


@pytest.mark.parametrize("name", ["resnet50", "preact_resnet152", "resnext101_32x8d"])
def test_minimum_input_size_on_meta(name):
    model = build_on_meta(name, num_classes=3, in_channels=1)
    assert model(torch.empty(2, 1, 32, 32, device="meta")).shape == (2, 3)
    with pytest.raises(InputShapeError, match=rf"{name}.*32x32.*31x31"):
        model(torch.empty(2, 1, 31, 31, device="meta"))


def test_no_classifier_and_reset():
    model = create_model("resnet18", num_classes=0).eval()
    assert model.num_features == 512
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 512)
        model.reset_classifier(7)
        assert model.num_classes == 7
        assert model(x).shape == (2, 7)
        assert torch.allclose(model(x), model.forward_head(model.forward_features(x)))
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (2, 512)
    wide = build_on_meta("resnet50", num_classes=0)
    assert wide.num_features == 2048
    assert wide(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 2048)


def test_options_are_keyword_only_and_checked():
    assert model_options("resnet18") == {"zero_init_residual": False}
    assert model_options("resnext50_32x4d") == {
        "stride_in_1x1": False,
        "zero_init_residual": False,
    }
    with pytest.raises(UnknownModelError, match="stride_in_1x1"):
        create_model("resnet18", stride_in_1x1=True)  # basic blocks have no 1x1 conv


def test_stride_placement():
    def first_block_of_stage2(model):
        convs = [m for m in model.stages[1][0].branch.modules() if isinstance(m, nn.Conv2d)]
        return [(c.kernel_size[0], c.stride[0]) for c in convs]

    default = build_on_meta("resnet50")
    assert first_block_of_stage2(default) == [(1, 1), (3, 2), (1, 1)]
    paper = build_on_meta("resnet50", stride_in_1x1=True)
    assert first_block_of_stage2(paper) == [(1, 2), (3, 1), (1, 1)]
    assert count(paper) == PUBLISHED["resnet50"]
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert paper.forward_features(x).shape == default.forward_features(x).shape


def test_init():
    model = create_model("resnet18")
    conv = model.stages[3][1].branch[1][0]  # 3x3, 512 -> 512
    fan_out = 512 * 3 * 3
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.03)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert torch.all(model.head.fc.bias == 0)


@torch.no_grad()
def test_zero_init_residual_makes_v1_blocks_relu_of_shortcut():
    def check(model) -> bool:
        model.eval()
        x = model.stem(torch.randn(2, 3, 32, 32))
        ok = True
        for block in blocks(model):
            expected = torch.relu(block.shortcut(x))
            x = block(x)
            ok = ok and torch.allclose(x, expected)
        return ok

    torch.manual_seed(0)
    assert check(create_model("resnet18", zero_init_residual=True))
    assert check(create_model("resnext50_32x4d", zero_init_residual=True))  # bottlenecks
    assert not check(create_model("resnet18"))


@torch.no_grad()
def test_zero_init_residual_makes_preact_blocks_their_shortcut():
    torch.manual_seed(0)
    model = create_model("preact_resnet18", zero_init_residual=True).train()
    x = model.stem(torch.randn(2, 3, 32, 32))
    for block in blocks(model):
        expected = block.shortcut(block.preact(x)) if block.projects else x
        x = block(x)
        assert torch.allclose(x, expected)
    assert sum(block.projects for block in blocks(model)) == 3  # stages 2-4 start projected


def test_preact_structure():
    model = build_on_meta("preact_resnet50")
    block_list = blocks(model)
    assert isinstance(block_list[0].preact, nn.Identity)  # reuses the stem's BN-ReLU
    assert block_list[0].projects  # 64 -> 256 channels
    assert all(isinstance(b.preact[0], nn.BatchNorm2d) for b in block_list[1:])
    assert isinstance(model.final_act[0], nn.BatchNorm2d)
    assert isinstance(build_on_meta("resnet50").final_act, nn.Identity)
    # a projection shortcut is a bare conv; the other blocks of a stage add their raw input back
    assert all(isinstance(s[0].shortcut, nn.Conv2d) for s in model.stages)
    assert all(isinstance(b.shortcut, nn.Identity) for s in model.stages for b in s[1:])


def test_preact_projection_takes_the_preactivated_input():
    model = create_model("preact_resnet18").eval()
    block = model.stages[1][0]
    seen = {}
    block.preact.register_forward_hook(lambda m, i, o: seen.setdefault("preact", o.clone()))
    block.shortcut.register_forward_pre_hook(lambda m, i: seen.setdefault("shortcut", i[0]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["preact"], seen["shortcut"])
    assert seen["shortcut"].min() >= 0  # after BN-ReLU


@pytest.mark.parametrize("name, width", [("resnext50_32x4d", 4), ("resnext101_32x8d", 8)])
def test_resnext_grouped_convs(name, width):
    model = build_on_meta(name)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == sum(DEPTHS[50 if "50" in name else 101])  # one per block
    assert all(conv.groups == 32 for conv in grouped)
    for stage, blocks_in_stage in enumerate(model.stages):
        conv = blocks_in_stage[0].branch[1][0]
        channels = 32 * width * 2**stage
        assert conv.weight.shape == (channels, width * 2**stage, 3, 3)
    plain = build_on_meta("resnet50")
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in plain.modules())
