"""AlexNet: the published count, the paper's LRN and initialisation, dropout, small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError
from cnnlab.models import create_model, model_options

PUBLISHED = 61_100_840  # single-tower AlexNet, 1000 classes, RGB input


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_types(model: nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in model.features]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("alexnet", num_classes=10)


def test_published_count_with_and_without_lrn():
    with torch.device("meta"):
        assert count(create_model("alexnet")) == PUBLISHED
        assert count(create_model("alexnet", lrn=True)) == PUBLISHED  # LRN has no weights


def test_classes_and_channels_change_only_first_and_last_layers():
    with torch.device("meta"):
        model = create_model("alexnet", num_classes=10, in_channels=1)
        out = model(torch.zeros(2, 1, 224, 224))
    assert out.shape == (2, 10)
    # Two fewer 11x11 input planes per first-layer filter; 990 fewer output rows and biases.
    assert count(model) == PUBLISHED - 2 * 64 * 11 * 11 - 990 * (4096 + 1)


def test_default_cfg():
    with torch.device("meta"):
        model = create_model("alexnet", in_channels=1)
    assert model.default_cfg.input_size == (1, 224, 224)
    assert model.default_cfg.min_input_size == (63, 63)
    assert model.default_cfg.year == 2012
    assert "Krizhevsky" in model.default_cfg.paper
    assert model_options("alexnet") == {"lrn": False}


def test_layer_layout_without_and_with_lrn():
    with torch.device("meta"):
        plain = create_model("alexnet")
        with_lrn = create_model("alexnet", lrn=True)
    conv_relu = ["Conv2d", "ReLU"]
    assert layer_types(plain) == [
        *conv_relu, "MaxPool2d", *conv_relu, "MaxPool2d",
        *conv_relu, *conv_relu, *conv_relu, "MaxPool2d",
    ]  # fmt: skip
    # Section 3.5: normalisation after the first two convs' ReLU, each followed by max pooling.
    lrn = "LocalResponseNorm"
    assert layer_types(with_lrn) == [
        *conv_relu, lrn, "MaxPool2d", *conv_relu, lrn, "MaxPool2d",
        *conv_relu, *conv_relu, *conv_relu, "MaxPool2d",
    ]  # fmt: skip
    convs = [m for m in plain.features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1),
    ]  # fmt: skip


def test_lrn_follows_the_paper_formula():
    with torch.device("meta"):
        norm = next(m for m in create_model("alexnet", lrn=True).features if "Local" in str(m))
    torch.manual_seed(0)
    a = torch.randn(2, 12, 3, 3) * 30  # large enough that the sum of squares matters
    # b_i = a_i / (k + alpha * sum over channels max(0, i-2)..min(N-1, i+2) of a_j^2)^beta
    squares = a.pow(2)
    sums = torch.stack([squares[:, max(0, i - 2) : i + 3].sum(1) for i in range(12)], dim=1)
    expected = a / (2 + 1e-4 * sums).pow(0.75)
    torch.testing.assert_close(norm(a), expected)


def test_paper_initialisation(model):
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.hidden if isinstance(m, nn.Linear)]
    # Biases 1 in conv 2, 4, 5 and the hidden FC layers, 0 elsewhere.
    assert [c.bias.unique().tolist() for c in convs] == [[0.0], [1.0], [0.0], [1.0], [1.0]]
    assert [fc.bias.unique().tolist() for fc in linears] == [[1.0], [1.0]]
    assert model.fc.bias.unique().tolist() == [0.0]
    for layer in [*convs, *linears]:
        assert layer.weight.mean().abs() < 1e-3
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_dropout_active_only_in_training(model):
    x = torch.randn(2, 3, 63, 63)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2


def test_minimum_input_and_refusal_below(model):
    model.eval()
    assert model(torch.randn(2, 3, 63, 63)).shape == (2, 10)
    assert model(torch.randn(1, 3, 63, 100)).shape == (1, 10)
    with pytest.raises(InputShapeError, match=r"alexnet.*63x63.*62x62"):
        model(torch.randn(1, 3, 62, 62))


def test_no_classifier_and_pre_logits():
    with torch.device("meta"):
        model = create_model("alexnet", num_classes=0)
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 4096)
        full = create_model("alexnet")
        features = full.forward_features(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, 256, 6, 6)
    assert full.forward_head(features, pre_logits=True).shape == (2, 4096)
    assert model.num_features == full.num_features == 4096


def test_reset_classifier_initialises_as_the_paper(model):
    model.reset_classifier(5)
    try:
        model.eval()
        assert model(torch.randn(2, 3, 63, 63)).shape == (2, 5)
        assert model.num_classes == 5
        assert model.fc.bias.unique().tolist() == [0.0]
        assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
        model.reset_classifier(0)
        assert isinstance(model.fc, nn.Identity)
    finally:
        model.reset_classifier(10)
