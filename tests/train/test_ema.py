"""The weight average: exact lerp arithmetic with a warm-up, buffers copied, no gradients."""

import pytest
import torch
from torch import nn

from cnnlab.train.ema import WeightAverage


def test_average_follows_the_lerp_with_warm_up():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.99)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    average.update(model)
    decay = min(0.99, 2 / 11)  # the warm-up caps the first decays
    torch.testing.assert_close(average.model[0].weight, start * decay + (start + 1) * (1 - decay))
    assert torch.all(average.model[1].running_mean == 3.0)
    assert not any(p.requires_grad for p in average.model.parameters())


def test_late_updates_use_the_full_decay():
    model = nn.Linear(1, 1, bias=False)
    average = WeightAverage(model, decay=0.5)
    average.updates = 1000
    before = average.model.weight.item()
    with torch.no_grad():
        model.weight.fill_(before + 2.0)
    average.update(model)
    assert average.model.weight.item() == pytest.approx(before + 1.0)
