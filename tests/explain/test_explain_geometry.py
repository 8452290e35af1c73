"""The geometry topics: output sizes and parameter counts, receptive fields."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.explain.geometry import _size_formula, _support


def test_output_size_formula_matches_every_alexnet_layer(run_quick):
    report = run_quick("output-size")
    numbers = report["numbers"]
    assert numbers["model"] == "alexnet" and numbers["input_sizes"] == [[3, 224, 224]]
    assert numbers["conv_pool_linear_layers"] == [5, 3, 3]
    assert numbers["shapes_checked"] == 11 and numbers["shape_mismatches"] == 0
    assert numbers["params_checked"] == 8 and numbers["param_mismatches"] == 0
    assert numbers["total_params_formula"] == numbers["total_params_model"] == 61_100_840
    examples = numbers["examples"]
    assert (
        "(224 - 11 + 2*2)/4 + 1 = 55.25, floor 55 (model: 64x55x55)"
        in examples["first conv output size"]
    )
    assert "11*11*3*64 + 64 = 23,296 (model: 23,296)" in examples["first conv params"]


@pytest.mark.parametrize("model", ["googlenet", "resnext50_32x4d", "vgg11_bn"])
def test_output_size_covers_ceil_mode_groups_and_batchnorm(run_quick, model):
    numbers = run_quick("output-size", model=model)["numbers"]
    assert numbers["shape_mismatches"] == 0 and numbers["param_mismatches"] == 0
    assert numbers["total_params_formula"] == numbers["total_params_model"]


def test_size_formula_rounds_down_or_up_in_ceil_mode():
    assert _size_formula(nn.MaxPool2d(3, 2), 112, 0)[0] == 55
    assert _size_formula(nn.MaxPool2d(3, 2, ceil_mode=True), 112, 0)[0] == 56
    # A ceil-mode window that would start in the right padding is dropped, as PyTorch does.
    pool = nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)
    assert _size_formula(pool, 5, 0)[0] == pool(torch.zeros(1, 1, 5, 5)).shape[-1] == 3


def test_receptive_field_three_3x3_equal_one_7x7_and_vgg_fields_match(run_quick):
    report = run_quick("receptive-field")
    numbers = report["numbers"]
    stack, single = numbers["stack_3x3"], numbers["single_7x7"]
    assert stack["measured_rf"] == single["measured_rf"] == [7, 7]
    assert stack["weights"] == 27 * 64**2 and single["weights"] == 49 * 64**2
    assert stack["filled"] == single["filled"] == 1.0
    assert numbers["model"] == "vgg11" and len(numbers["layers_measured"]) >= 3
    assert numbers["measured_rf"] == numbers["analytic_rf"]
    assert numbers["measured_rf"] == sorted(numbers["measured_rf"])  # grows with depth
    assert numbers["mismatches"] == 0 and numbers["not_measurable"] == []
    assert numbers["min_filled_fraction"] == 1.0


def test_receptive_field_of_concatenated_branches(run_quick):
    numbers = run_quick("receptive-field", model="googlenet")["numbers"]
    assert numbers["measured_rf"] == numbers["analytic_rf"] and numbers["mismatches"] == 0


def test_max_pool_gradient_reaches_one_pixel_per_window_average_pool_all():
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    rows, cols, _ = _support(nn.MaxPool2d(2)(x)[0, :, 0, 0].sum(), x)
    assert rows[0] == rows[1] and cols[0] == cols[1]  # the window's maximum alone
    rows, cols, fill = _support(nn.AvgPool2d(2)(x)[0, :, 0, 0].sum(), x)
    assert rows == cols == [0, 1] and fill == 1.0
