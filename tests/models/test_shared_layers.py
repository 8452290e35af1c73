"""Shared blocks: the fixed-size pool in front of fully connected heads."""

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.layers import FixedSizePool


def test_fixed_size_pool_passes_the_design_size_through_and_pools_others():
    pool = FixedSizePool((5, 5))
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    assert pool(x) is x  # no pooling pass, forward or backward
    y = torch.randn(2, 3, 11, 9)
    assert torch.equal(pool(y), nn.AdaptiveAvgPool2d((5, 5))(y))
    assert FixedSizePool(7)(torch.randn(1, 2, 7, 7)).shape == (1, 2, 7, 7)


def test_fully_connected_head_models_use_it():
    for name in ("lenet", "alexnet", "vgg11"):
        assert isinstance(create_model(name).pool, FixedSizePool)
