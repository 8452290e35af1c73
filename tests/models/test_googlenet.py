"""GoogLeNet: published parameter counts, the paper's options, torchvision's form, auxiliary
heads, small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError, UnknownModelError
from cnnlab.models import create_model, model_options

# Table 1 of the paper: in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
TABLE = {
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
OUT_WIDTHS = (256, 480, 512, 512, 512, 528, 832, 832, 1024)

# torchvision's googlenet: 6,624,904 without and 13,004,888 with the auxiliary heads.
REFERENCE = 6_624_904
REFERENCE_NO_BN = 6_617_624
LARGE_KERNEL_BN = 7_005_832
PAPER_EXACT = 6_998_552  # no BatchNorm, true 5x5 kernels
REFERENCE_AUX = 13_004_888


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(**options) -> nn.Module:
    with torch.device("meta"):
        return create_model("googlenet", **options)


def conv_params(cin: int, cout: int, kernel: int, bn: bool) -> int:
    # Weights, then either a bias or BatchNorm's scale and shift.
    return cin * cout * kernel * kernel + (2 * cout if bn else cout)


def expected_count(bn: bool, large: int, aux: bool = False, classes: int = 1000) -> int:
    total = conv_params(3, 64, 7, bn) + conv_params(64, 64, 1, bn) + conv_params(64, 192, 3, bn)
    for cin, c1, r3, c3, r5, c5, pp in TABLE.values():
        total += conv_params(cin, c1, 1, bn) + conv_params(cin, r3, 1, bn)
        total += conv_params(r3, c3, 3, bn) + conv_params(cin, r5, 1, bn)
        total += conv_params(r5, c5, large, bn) + conv_params(cin, pp, 1, bn)
    total += 1024 * classes + classes
    if aux:
        for cin in (512, 528):  # outputs of 4a and 4d
            total += conv_params(cin, 128, 1, bn) + 2048 * 1024 + 1024 + 1024 * classes + classes
    return total


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, REFERENCE),
        ({"batch_norm": False}, REFERENCE_NO_BN),
        ({"large_branch_kernel": 5}, LARGE_KERNEL_BN),
        ({"batch_norm": False, "large_branch_kernel": 5}, PAPER_EXACT),
        ({"batch_norm": False, "large_branch_kernel": 5, "lrn": True}, PAPER_EXACT),
        ({"aux_logits": True}, REFERENCE_AUX),
    ],
)
def test_parameter_counts(options, expected):
    assert count(build_on_meta(**options)) == expected


def test_counts_follow_from_the_table():
    assert expected_count(bn=True, large=3) == REFERENCE
    assert expected_count(bn=False, large=3) == REFERENCE_NO_BN
    assert expected_count(bn=True, large=5) == LARGE_KERNEL_BN
    assert expected_count(bn=False, large=5) == PAPER_EXACT
    assert expected_count(bn=True, large=3, aux=True) == REFERENCE_AUX


def test_options_and_validation():
    assert model_options("googlenet") == {
        "batch_norm": True,
        "large_branch_kernel": 3,
        "lrn": False,
        "aux_logits": False,
        "dropout": 0.4,
        "aux_dropout": 0.7,
        "torchvision_compat": False,
    }
    with pytest.raises(UnknownModelError, match="large_branch_kernel must be 3 or 5, got 7"):
        create_model("googlenet", large_branch_kernel=7)


def test_torchvision_compat_pools_2x2_after_4e_and_changes_nothing_else():
    paper = build_on_meta(aux_logits=True)
    compat = build_on_meta(aux_logits=True, torchvision_compat=True)
    assert (paper.features.pool4.kernel_size, compat.features.pool4.kernel_size) == (3, 2)
    assert compat.features.pool4.stride == 2 and compat.features.pool4.ceil_mode
    assert other_layers(compat) == other_layers(paper)
    assert count(compat) == count(paper) == REFERENCE_AUX
    # The same map sizes at 224; one more row and column where 4e's map is odd (13 at 208).
    for size, widths in ((224, (7, 7)), (208, (7, 6))):
        x = torch.empty(1, 3, size, size, device="meta")
        pooled = [model.features.pool4(model.features[:-3](x)) for model in (compat, paper)]
        assert tuple(p.shape[-1] for p in pooled) == widths


def other_layers(model: nn.Module) -> list[tuple[str, str]]:
    """Every layer but the pool after 4e, by name and configuration."""
    return [
        (name, str(module))
        for name, module in model.named_modules()
        if not list(module.children()) and name != "features.pool4"
    ]


@pytest.mark.parametrize(
    "option", [{"batch_norm": False}, {"large_branch_kernel": 5}, {"lrn": True}]
)
def test_torchvision_compat_refuses_options_torchvisions_network_lacks(option):
    key, value = next(iter(option.items()))
    with pytest.raises(UnknownModelError, match=rf"torchvision's network.*got {key}={value!r}"):
        create_model("googlenet", torchvision_compat=True, **option)


def test_paper_form_layers():
    model = build_on_meta(batch_norm=False, large_branch_kernel=5, lrn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    names = list(dict(model.features.named_children()))
    assert names[:7] == ["conv1", "pool1", "lrn1", "conv2", "conv3", "lrn2", "pool2"]
    lrn = model.features.lrn1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert model.features.inception4a.branch_large[1][0].kernel_size == (5, 5)
    assert dict(model.named_modules())["head.dropout"].p == 0.4

    reference = build_on_meta()
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in reference.modules())
    bns = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in reference.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == len(convs) == 3 + 6 * 9
    assert all(bn.eps == 1e-3 for bn in bns) and all(c.bias is None for c in convs)
    assert reference.features.inception4a.branch_large[1][0].kernel_size == (3, 3)


def test_map_sizes_and_widths_at_224():
    # Ceil-mode max pools give the paper's 112-56-28-14-7 (floor rounding would give 55-27-13-6).
    model = build_on_meta()
    shapes = {}
    for name, layer in model.features.named_children():
        layer.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    out = model(torch.empty(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, 1000)
    assert shapes["conv1"][-1] == 112 and shapes["pool1"][-1] == 56
    assert shapes["pool2"][1:] == (192, 28, 28)
    blocks = [f"inception{key}" for key in TABLE]
    assert tuple(shapes[b][1] for b in blocks) == OUT_WIDTHS
    # Each output is the sum of its branch widths, and the next block's input.
    branch_sums = [c1 + c3 + c5 + pp for _, c1, _, c3, _, c5, pp in TABLE.values()]
    assert tuple(branch_sums) == OUT_WIDTHS
    assert [cfg[0] for cfg in TABLE.values()][1:] == list(OUT_WIDTHS[:-1])
    assert [shapes[b][-1] for b in blocks] == [28, 28, 14, 14, 14, 14, 14, 7, 7]


def test_aux_heads_train_dict_eval_tensor():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=7, aux_logits=True)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, dict) and set(out) == {"logits", "aux1", "aux2"}
    assert all(v.shape == (2, 7) for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    for head in ("aux1", "aux2"):
        aux = model.aux[head]
        for param in (aux.conv[0].weight, aux.fc1.weight, aux.fc2.weight):
            assert param.grad is not None and param.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    # Without aux heads training also returns the bare logits.
    plain = create_model("googlenet", num_classes=7).train()
    assert isinstance(plain(x), torch.Tensor)


@pytest.mark.parametrize("aux_logits", [False, True])
def test_fashion_mnist_96(aux_logits):
    # d2l trains GoogLeNet on 96x96 grayscale Fashion-MNIST with 10 classes.
    model = create_model("googlenet", num_classes=10, in_channels=1, aux_logits=aux_logits)
    x = torch.randn(2, 1, 96, 96)
    out = model.train()(x)
    logits = out["logits"] if aux_logits else out
    assert logits.shape == (2, 10)
    if aux_logits:
        assert out["aux1"].shape == out["aux2"].shape == (2, 10)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
    assert model.default_cfg.input_size == (1, 224, 224)


@pytest.mark.parametrize("aux_logits", [False, True])
def test_minimum_input(aux_logits):
    model = create_model("googlenet", num_classes=5, aux_logits=aux_logits).eval()
    assert model.default_cfg.min_input_size == (32, 32)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(InputShapeError, match=r"googlenet .*at least 32x32.*got 31x31"):
        model(torch.randn(2, 3, 31, 31))


def test_reset_classifier_and_no_classifier():
    model = create_model("googlenet", aux_logits=True)
    model.reset_classifier(3)
    assert model.num_classes == 3
    assert model.head.fc.out_features == 3
    assert model.aux["aux1"].fc2.out_features == model.aux["aux2"].fc2.out_features == 3
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert all(v.shape == (2, 3) for v in out.values())

    features = create_model("googlenet", num_classes=0).eval()
    assert features.num_features == 1024
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert features(x).shape == (2, 1024)
        fmap = features.forward_features(x)
        assert fmap.shape == (2, 1024, 2, 2)
        assert features.forward_head(fmap, pre_logits=True).shape == (2, 1024)


def test_initialisation():
    torch.manual_seed(0)
    model = create_model("googlenet", batch_norm=False, aux_logits=True)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.weight.abs().max() <= 0.02  # truncated at 2 std
            assert torch.count_nonzero(module.bias) == 0
    fc1 = model.aux["aux1"].fc1.weight
    assert abs(fc1.std().item() - 0.0088) < 0.0005  # std of N(0, 0.01) truncated at +-2 std
    bn = create_model("googlenet").features.conv1[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_default_cfg():
    model = build_on_meta(in_channels=1)
    assert model.name == "googlenet"
    assert model.default_cfg.input_size == (1, 224, 224)
    assert model.default_cfg.year == 2015
    assert "Going Deeper with Convolutions" in model.default_cfg.paper
