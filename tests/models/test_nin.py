"""Network in Network: counts, the class block and global pooling head, dropout, small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError
from cnnlab.models import create_model, model_options

# (out channels, kernel) of each block's spatial conv, as d2l 8.3 builds the net.
BLOCKS = [(96, 11), (256, 5), (384, 3)]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_count(in_channels: int = 3, classes: int = 1000) -> int:
    total, cin = 0, in_channels
    for cout, kernel in [*BLOCKS, (classes, 3)]:
        # one kxk conv and two 1x1 convs, all with biases
        total += cin * cout * kernel * kernel + cout + 2 * (cout * cout + cout)
        cin = cout
    return total


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("nin", num_classes=10, in_channels=1)


def test_counts():
    with torch.device("meta"):
        imagenet = create_model("nin")
        fashion = create_model("nin", num_classes=10, in_channels=1)
        assert imagenet(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)
    assert count(imagenet) == expected_count() == 7_439_608
    assert count(fashion) == expected_count(1, 10) == 1_992_166


def test_no_fully_connected_layer():
    with torch.device("meta"):
        model = create_model("nin", num_classes=10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    convs = [m for m in model.classifier if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (10, (3, 3), (1, 1)),
        (10, (1, 1), (0, 0)),
        (10, (1, 1), (0, 0)),
    ]
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_block_layout():
    with torch.device("meta"):
        model = create_model("nin")
    blocks = [m for m in model.features if isinstance(m, nn.Sequential)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(blocks) == len(pools) == 3
    first = blocks[0]
    assert [type(m).__name__ for m in first] == ["Conv2d", "ReLU"] * 3
    assert (first[0].kernel_size, first[0].stride, first[0].padding) == ((11, 11), (4, 4), (0, 0))
    assert [b[0].out_channels for b in blocks] == [96, 256, 384]
    assert model.num_features == 384
    assert model_options("nin") == {}
    assert model.default_cfg.input_size == (3, 224, 224)


def test_head_is_global_average_of_class_maps(model):
    model.eval()
    x = torch.randn(2, 1, 128, 128)
    features = model.forward_features(x)
    assert features.shape == (2, 384, 2, 2)
    class_maps = model.classifier(features)
    torch.testing.assert_close(model(x), class_maps.mean(dim=(2, 3)))
    assert (model(x) >= 0).all()  # the class block ends in a ReLU, as in d2l


def test_pre_logits_and_no_classifier(model):
    model.eval()
    x = torch.randn(2, 1, 96, 96)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    model.reset_classifier(0)
    try:
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(4)
        assert model(x).shape == (2, 4) and model.num_classes == 4
    finally:
        model.reset_classifier(10)


def test_dropout_active_only_in_training(model):
    x = torch.randn(2, 1, 67, 67)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_minimum_input_and_refusal_below(model):
    model.eval()
    assert model.default_cfg.min_input_size == (67, 67)
    assert model(torch.randn(2, 1, 67, 67)).shape == (2, 10)
    with pytest.raises(InputShapeError, match=r"nin.*67x67.*66x66"):
        model(torch.randn(2, 1, 66, 66))


def test_xavier_initialisation(model):
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        fan_in = conv.weight[0].numel()
        fan_out = conv.out_channels * conv.weight[0, 0].numel()
        assert conv.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
        assert torch.count_nonzero(conv.bias) == 0
