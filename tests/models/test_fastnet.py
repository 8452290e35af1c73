"""FastNet, the fast recipes' network: its layout, size, and the options the recipes use."""

import pytest
import torch
from torch import nn

from cnnlab.models import create_model


def expected_parameters(in_channels, widths, stem_width, depth, num_classes):
    """3x3 convs without bias, each followed by a BatchNorm (scale and shift), then a linear
    layer on the last width."""
    convs, channels = [], in_channels
    if stem_width:
        convs.append((in_channels, stem_width))
        channels = stem_width
    for width in widths:
        convs += [(channels, width)] + [(width, width)] * (depth - 1)
        channels = width
    return (
        sum(9 * cin * cout + 2 * cout for cin, cout in convs) + channels * num_classes + num_classes
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"widths": (16, 32, 64), "stem_width": 0, "depth": 1},
        {"widths": (64, 128, 256), "stem_width": 32, "depth": 2},
        {"widths": (8, 16), "stem_width": 4, "depth": 3},
    ],
)
def test_parameter_count_follows_the_layout(options):
    model = create_model("fastnet", num_classes=10, in_channels=1, **options)
    full = {"widths": (32, 64, 128), "stem_width": 24, "depth": 2, **options}
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(1, full["widths"], full["stem_width"], full["depth"], 10)


def test_each_block_halves_the_resolution_and_pools_before_normalising():
    model = create_model("fastnet", num_classes=10, in_channels=1)
    features = model.forward_features(torch.randn(2, 1, 28, 28))
    assert features.shape == (2, 128, 3, 3)  # 28 -> 14 -> 7 -> 3
    layers = list(model.features)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    assert len(pools) == 3
    assert all(isinstance(layers[i + 1], nn.BatchNorm2d) for i in pools)
    assert all(isinstance(layers[i - 1], nn.Conv2d) for i in pools)


def test_rgb_input_and_minimum_size():
    model = create_model("fastnet", num_classes=100, in_channels=3, widths=(16, 32))
    assert model.default_cfg.min_input_size == (4, 4)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match="depth"):
        create_model("fastnet", depth=0)
    with pytest.raises(ValueError, match="widths"):
        create_model("fastnet", widths=())
