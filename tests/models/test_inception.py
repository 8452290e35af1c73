"""Tests for BN-Inception, Inception-v3, Inception-v4 and Inception-ResNet-v2.

The networks are large: real forwards run on CPU at each model's minimum input size only,
everything at the design size runs on the meta device.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError
from cnnlab.models import create_model, model_options
from cnnlab.models.inception_resnet import ResidualInception, block_a

NAMES = ("inception_v2", "inception_v3", "inception_v4", "inception_resnet_v2")
# Design input size, minimum input size with default options, width of the pooled features.
GEOMETRY = {
    "inception_v2": (224, 32, 1024),
    "inception_v3": (299, 299, 2048),
    "inception_v4": (299, 75, 1536),
    "inception_resnet_v2": (299, 75, 1536),
}


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs).eval()


def meta_batch(size: int, channels: int = 3) -> torch.Tensor:
    return torch.empty(2, channels, size, size, device="meta")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def grayscale_models() -> dict[str, nn.Module]:
    """Real (CPU) models for 10 classes of 1-channel images, built once for the whole file."""
    torch.manual_seed(0)
    models = {name: create_model(name, num_classes=10, in_channels=1) for name in NAMES}
    # Inception-v3 without the aux head is the same network minus that head: reuse its weights
    # rather than drawing 24M truncated-normal values again.
    no_aux = meta_model("inception_v3", num_classes=10, in_channels=1, aux_logits=False)
    no_aux.to_empty(device="cpu")
    missing, unexpected = no_aux.load_state_dict(models["inception_v3"].state_dict(), strict=False)
    assert not missing and unexpected and all(key.startswith("aux.") for key in unexpected)
    models["inception_v3_no_aux"] = no_aux
    return models


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("inception_v3", {}, 27_161_264),
        ("inception_v3", {"aux_logits": False}, 23_834_568),
        ("inception_v4", {}, 42_679_816),
        ("inception_resnet_v2", {}, 55_843_464),
    ],
)
def test_published_parameter_counts(name, options, expected):
    assert num_params(meta_model(name, **options)) == expected


def test_inception_v3_aux_head_parameters():
    # 5x5/3 pool; 1x1 conv 768 -> 128 + BN; 5x5 conv 128 -> 768 + BN; linear 768 -> 1000.
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert aux == 3_326_696
    with_aux, without = meta_model("inception_v3"), meta_model("inception_v3", aux_logits=False)
    assert num_params(with_aux) - num_params(without) == aux


def test_inception_v2_parameter_count_from_the_paper_table():
    def conv_bn(cin, cout, k):  # bias-free conv, then BatchNorm's weight and bias
        return cin * cout * k * k + 2 * cout

    # Ioffe & Szegedy (2015), Figure 5: #1x1, #3x3 reduce, #3x3, double #3x3 reduce,
    # double #3x3, pool projection (0: pass-through in the stride-2 modules 3c and 4e).
    rows = [
        (64, 64, 64, 64, 96, 32), (64, 64, 96, 64, 96, 64), (0, 128, 160, 64, 96, 0),
        (224, 64, 96, 96, 128, 128), (192, 96, 128, 96, 128, 128),
        (160, 128, 160, 128, 160, 128), (96, 128, 192, 160, 192, 128),
        (0, 128, 192, 192, 256, 0), (352, 192, 320, 160, 224, 128),
        (352, 192, 320, 192, 224, 128),
    ]  # fmt: skip
    total = conv_bn(3, 64, 7) + conv_bn(64, 64, 1) + conv_bn(64, 192, 3)
    cin = 192
    for n1, r3, n3, rd, nd, proj in rows:
        total += conv_bn(cin, n1, 1) + conv_bn(cin, r3, 1) + conv_bn(r3, n3, 3)
        total += conv_bn(cin, rd, 1) + conv_bn(rd, nd, 3) + conv_bn(nd, nd, 3)
        total += conv_bn(cin, proj, 1)
        cin = n1 + n3 + nd + (proj or cin)
    total += cin * 1000 + 1000
    assert cin == 1024
    assert total == 11_285_224
    assert num_params(meta_model("inception_v2")) == total


def test_inception_v2_module_widths_add_up_from_the_table():
    model = meta_model("inception_v2")
    x = model.stem(meta_batch(224))
    assert x.shape[1:] == (192, 28, 28)
    shapes = []
    for module in model.inception:
        x = module(x)
        shapes.append(tuple(x.shape[1:]))
    # The sums of each row's branch widths (the table's output column says 576 for 4c/4d and
    # 1024 for 4e, which its own rows contradict).
    widths = [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    sizes = [28, 28, 14, 14, 14, 14, 14, 7, 7, 7]
    assert shapes == [(c, s, s) for c, s in zip(widths, sizes, strict=True)]
    # The last module pools with max, the others with a stride of 1 with average (Figure 5).
    assert isinstance(model.inception.inception_5b.branches[-1][0], nn.MaxPool2d)
    assert isinstance(model.inception.inception_5a.branches[-1][0], nn.AvgPool2d)


# ---------------------------------------------------------------- forward passes


@pytest.mark.parametrize("name", [*NAMES[:1], *NAMES[2:], "inception_v3_no_aux"])
def test_forward_at_minimum_size_on_cpu(grayscale_models, name):
    model = grayscale_models[name].eval()
    size = model.default_cfg.min_input_size[0]
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 1, size, size))
        logits = model(torch.randn(2, 1, size, size))
    assert features.shape == (2, model.num_features, 1, 1)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_inception_v3_aux_output_by_name(grayscale_models):
    model = grayscale_models["inception_v3"].train()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 299, 299))
    model.eval()
    assert set(out) == {"logits", "aux"}
    assert out["logits"].shape == out["aux"].shape == (2, 10)
    assert all(torch.isfinite(t).all() for t in out.values())
    # In eval mode only the logits (on meta: the same network, without the CPU cost).
    logits = meta_model("inception_v3", num_classes=10, in_channels=1)(meta_batch(299, 1))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)


def test_inception_v3_without_aux_returns_a_tensor_in_training():
    model = meta_model("inception_v3", aux_logits=False).train()
    assert model.aux is None
    assert model(meta_batch(75)).shape == (2, 1000)


@pytest.mark.parametrize("name", NAMES)
def test_meta_forward_at_design_size_and_299(name):
    size, _, width = GEOMETRY[name]
    model = meta_model(name)
    assert model.default_cfg.input_size == (3, size, size)
    final = 7 if name == "inception_v2" else 8
    assert model.forward_features(meta_batch(size)).shape == (2, width, final, final)
    assert model(meta_batch(299)).shape == (2, 1000)


def test_inception_v2_takes_odd_map_sizes():
    # Stride-2 modules must agree on the output size of every branch, odd inputs included.
    model = meta_model("inception_v2")
    for size in (200, 225, 97):
        assert model(meta_batch(size)).shape == (2, 1000)


# ---------------------------------------------------------------- minimum input sizes


@pytest.mark.parametrize("name", NAMES)
def test_refuses_input_below_minimum(name):
    _, minimum, _ = GEOMETRY[name]
    model = meta_model(name)
    assert model.default_cfg.min_input_size == (minimum, minimum)
    with pytest.raises(InputShapeError, match=rf"{name}.*{minimum}x{minimum}.*{minimum - 1}x"):
        model(meta_batch(minimum - 1))


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_valid_conv_minimum_is_tight(name):
    model = meta_model(name)
    assert model.forward_features(meta_batch(75)).shape[-2:] == (1, 1)
    with pytest.raises(RuntimeError):
        model.forward_features(meta_batch(74))


def test_inception_v3_minimum_accounts_for_aux_head():
    no_aux = meta_model("inception_v3", aux_logits=False)
    assert no_aux.default_cfg.min_input_size == (75, 75)
    assert no_aux.forward_features(meta_batch(75)).shape[-2:] == (1, 1)
    with pytest.raises(RuntimeError):
        no_aux.forward_features(meta_batch(74))
    with pytest.raises(InputShapeError):
        no_aux(meta_batch(74))

    model = meta_model("inception_v3").train()
    assert model(meta_batch(299))["aux"].shape == (2, 1000)
    grid_17 = model.stage_17(model.stage_35(model.stem(meta_batch(298))))
    assert grid_17.shape[-1] == 16
    with pytest.raises(RuntimeError):  # the aux head's 5x5/3 pool and 5x5 conv need 17
        model.aux(grid_17)


# ---------------------------------------------------------------- classifier options


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_zero_returns_pooled_features(name):
    _, minimum, width = GEOMETRY[name]
    model = meta_model(name, num_classes=0)
    assert model.num_features == width
    assert model(meta_batch(minimum)).shape == (2, width)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    _, minimum, width = GEOMETRY[name]
    model = meta_model(name)
    with torch.device("meta"):
        model.reset_classifier(5)
    assert model.num_classes == 5
    assert model(meta_batch(minimum)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(meta_batch(minimum)).shape == (2, width)


def test_inception_v3_reset_classifier_resets_the_aux_head_too():
    model = meta_model("inception_v3").train()
    with torch.device("meta"):
        model.reset_classifier(5)
    out = model(meta_batch(299))
    assert out["logits"].shape == out["aux"].shape == (2, 5)
    model.reset_classifier(0)
    out = model(meta_batch(299))
    assert out["logits"].shape == (2, 2048) and out["aux"].shape == (2, 768)


@pytest.mark.parametrize("name", NAMES)
def test_grayscale_input(name):
    _, minimum, _ = GEOMETRY[name]
    model = meta_model(name, in_channels=1, num_classes=10)
    assert model.default_cfg.input_size[0] == 1
    assert model(meta_batch(minimum, channels=1)).shape == (2, 10)
    with pytest.raises(InputShapeError):
        model(meta_batch(minimum, channels=3))


def test_options_and_dropout():
    assert model_options("inception_v2") == {}
    assert model_options("inception_v3") == {
        "aux_logits": True,
        "dropout": 0.2,
        "torchvision_compat": False,
    }
    assert model_options("inception_v4") == {"dropout": 0.2}
    assert model_options("inception_resnet_v2") == {"dropout": 0.2}
    for name in NAMES[1:]:
        assert meta_model(name, dropout=0.3).head.dropout.p == 0.3
        assert isinstance(meta_model(name, dropout=0.0).head.dropout, nn.Identity)


# ---------------------------------------------------------------- family specifics


def test_batch_norm_eps():
    def eps_values(name):
        return {m.eps for m in meta_model(name).modules() if isinstance(m, nn.BatchNorm2d)}

    assert eps_values("inception_v2") == {1e-5}
    for name in NAMES[1:]:
        assert eps_values(name) == {1e-3}, name


def average_pools(model: nn.Module) -> dict[str, bool]:
    """Each average pool with padding, by name: whether it counts the zero padding."""
    return {
        name: module.count_include_pad
        for name, module in model.named_modules()
        if isinstance(module, nn.AvgPool2d) and module.padding
    }


def test_inception_v3_torchvision_compat_counts_the_padding_in_its_average_pools():
    paper = average_pools(meta_model("inception_v3"))
    compat = average_pools(meta_model("inception_v3", torchvision_compat=True))
    # the 3x3/1 pools of the three 35x35, four 17x17 and two 8x8 modules; the others unchanged
    assert paper.keys() == compat.keys() and len(paper) == 3 + 4 + 2
    assert not any(paper.values()) and all(compat.values())
    for name in ("inception_v4", "inception_resnet_v2"):
        assert not any(average_pools(meta_model(name)).values())
    compat_model = meta_model("inception_v3", torchvision_compat=True)
    assert num_params(compat_model) == 27_161_264
    assert compat_model(meta_batch(299)).shape == (2, 1000)


def test_inception_v3_truncated_normal_init(grayscale_models):
    model = grayscale_models["inception_v3"]
    weight = model.stage_8[-1].branches[0][0].weight  # 1x1 conv 2048 -> 320
    assert weight.abs().max() <= 0.2
    assert weight.std().item() == pytest.approx(0.1 * 0.88, rel=0.05)  # cut at 2 std
    assert model.aux.conv[0].weight.abs().max() <= 0.02
    assert model.aux.fc.weight.abs().max() <= 0.002
    assert model.head.fc.weight.abs().max() <= 0.2
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in norms)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_inception_v4_he_scaled_init(grayscale_models):
    weight = grayscale_models["inception_v4"].features[-1].branches[0][0].weight  # 1536 -> 256
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 1536), rel=0.05)


def test_inception_resnet_v2_residual_blocks():
    model = meta_model("inception_resnet_v2")
    blocks = [m for m in model.modules() if isinstance(m, ResidualInception)]
    assert [b.scale for b in blocks] == [0.17] * 10 + [0.10] * 20 + [0.20] * 9 + [1.0]
    assert all(isinstance(b.act, nn.ReLU) for b in blocks[:-1])
    assert isinstance(blocks[-1].act, nn.Identity)
    # Only the 1x1 "up" projections carry a conv bias, and no BatchNorm follows them.
    biased = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biased == [b.up for b in blocks]
    widths = [b.up.out_channels for b in blocks]
    assert widths == [320] * 10 + [1088] * 20 + [2080] * 10


def test_residual_branch_is_scaled_before_the_sum():
    torch.manual_seed(0)
    block = block_a(320, 0.17).eval()
    nn.init.zeros_(block.up.weight)
    nn.init.ones_(block.up.bias)
    x = torch.randn(1, 320, 5, 5)
    assert torch.allclose(block(x), torch.relu(x + 0.17))
