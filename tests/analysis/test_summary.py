"""Summary: per-layer parameters and MACs add up, MACs agree with torch's FLOP counter, the model
is left untouched, and inputs that do not fit are refused with the layer and the formula."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.analysis import format_summary, summarize
from cnnlab.errors import InputShapeError
from cnnlab.models import create_model, list_models


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", list_models())
def test_layer_params_sum_to_total_and_macs_match_flop_counter(name):
    model = meta_model(name)
    summary = summarize(model)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert sum(row.params for row in summary.layers) == summary.total_params
    x = torch.zeros(1, *model.default_cfg.input_size, device="meta")
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2 * summary.total_macs == counter.get_total_flops()
    assert summary.output_shape == [1000]


def test_lenet_rows_by_hand():
    summary = summarize("lenet", (1, 28, 28), num_classes=10)
    conv1, conv2 = (row for row in summary.layers if row.type == "Conv2d")
    assert conv1.output_shape == [6, 28, 28] and conv1.params == 6 * 25 + 6
    assert conv1.macs == 6 * 28 * 28 * 25 and conv1.receptive_field == [5, 5]
    assert conv2.output_shape == [16, 10, 10] and conv2.macs == 16 * 10 * 10 * 6 * 25
    assert conv2.receptive_field == [14, 14] and conv2.jump == [2, 2]
    assert summary.total_params == 61706


def test_vgg11_spatial_size_halves_block_by_block():
    summary = summarize("vgg11", (1, 224, 224))
    pools = [row.output_shape[-1] for row in summary.layers if row.type == "MaxPool2d"]
    assert pools == [112, 56, 28, 14, 7]
    jumps = [row.jump[0] for row in summary.layers if row.type == "MaxPool2d"]
    assert jumps == [2, 4, 8, 16, 32]
    text = format_summary(summary)
    assert "1 MAC = 2 FLOPs" in text and "512x7x7" in text


def test_summary_leaves_model_as_found():
    model = create_model("lenet_bn", num_classes=10, in_channels=1)
    model.train()
    model.hidden.eval()
    hook_counts = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, (1, 28, 28))
    assert model.training and not model.hidden.training and model.features.training
    assert hook_counts == [
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    ]
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, before[key]), key


def test_non_square_kernels_give_non_square_fields():
    model = nn.Sequential(nn.Conv2d(1, 2, (1, 7), padding=(0, 3)), nn.Conv2d(2, 2, (3, 1)))
    summary = summarize(model, (1, 20, 20))
    assert summary.layers[0].receptive_field == [1, 7]
    assert summary.layers[1].receptive_field == [3, 7]
    assert summary.layers[1].output_shape == [2, 18, 20]


def test_merge_takes_largest_receptive_field():
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(1, 1, 1)
            self.large = nn.Conv2d(1, 1, 5, padding=2)

        def forward(self, x):
            return torch.cat([self.small(x), self.large(x)], 1) + 1

    summary = summarize(TwoBranches(), (1, 9, 9))
    assert summary.receptive_field == [5, 5]


def test_input_too_small_names_layer_and_formula():
    with pytest.raises(InputShapeError) as error:
        summarize("alexnet", (3, 32, 32))
    message = str(error.value)
    assert "alexnet" in message and "(W - F + 2P) / S + 1" in message
    assert "features." in message and "below 1" in message


def test_input_too_small_for_plain_module():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(4))
    with pytest.raises(InputShapeError, match=r"layer 1 \(MaxPool2d\).*\(3 - 4 \+ 2\*0\) / 4 \+ 1"):
        summarize(model, (1, 5, 5))


def test_linear_width_mismatch_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(
        InputShapeError, match=r"layer 1 \(Linear\) expects 10 input features, got 16"
    ):
        summarize(model, (1, 4, 4))


def test_largest_models_summarise_without_weights():
    summary = summarize("resnext101_32x8d")
    assert summary.total_params == 88_791_336
    assert summary.total_macs > 16e9
