"""The receptive-field topic: three 3x3 convs against one 7x7, and measured against analytic
fields through a zoo model."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.explain.receptive_field import _support


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
