"""The output-size topic: every layer's output shape and parameter count by formula."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.explain.output_size import _size_formula


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
