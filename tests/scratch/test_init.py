"""Initialisers: shapes, uniform bounds, target standard deviations and torch's fan rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnlab.scratch.init import (
    calculate_gain,
    fan_in_and_fan_out,
    kaiming_normal,
    kaiming_uniform,
    xavier_normal,
    xavier_uniform,
)

LINEAR, CONV = (256, 512), (64, 32, 3, 3)


@pytest.mark.parametrize("shape", [LINEAR, CONV, (5, 7), (4, 2, 5), (8, 3, 1, 1)])
def test_fans_match_torch(shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert fan_in_and_fan_out(shape) == expected


@pytest.mark.parametrize(
    ("name", "a"),
    [("relu", 0.0), ("leaky_relu", 0.2), ("tanh", 0.0), ("linear", 0.0), ("sigmoid", 0.0)],
)
def test_gain_matches_torch(name, a):
    assert calculate_gain(name, a) == pytest.approx(torch.nn.init.calculate_gain(name, a))


def _xavier_std(shape, gain=1.0):
    fi, fo = fan_in_and_fan_out(shape)
    return gain * math.sqrt(2 / (fi + fo))


def _kaiming_std(shape, a=0.0, mode="fan_in", nonlinearity="relu"):
    fi, fo = fan_in_and_fan_out(shape)
    return calculate_gain(nonlinearity, a) / math.sqrt(fi if mode == "fan_in" else fo)


@pytest.mark.parametrize("shape", [LINEAR, CONV])
@pytest.mark.parametrize(
    ("init", "kwargs", "std", "uniform"),
    [
        (xavier_uniform, {}, _xavier_std, True),
        (xavier_uniform, {"gain": 5 / 3}, lambda s: _xavier_std(s, 5 / 3), True),
        (xavier_normal, {}, _xavier_std, False),
        (kaiming_uniform, {}, _kaiming_std, True),
        (
            kaiming_uniform,
            {"a": 0.1, "mode": "fan_out", "nonlinearity": "leaky_relu"},
            lambda s: _kaiming_std(s, 0.1, "fan_out", "leaky_relu"),
            True,
        ),
        (kaiming_normal, {}, _kaiming_std, False),
        (kaiming_normal, {"mode": "fan_out"}, lambda s: _kaiming_std(s, mode="fan_out"), False),
    ],
)
def test_init_shape_bound_and_std(shape, init, kwargs, std, uniform):
    w = init(shape, np.random.default_rng(0), **kwargs)
    target = std(shape)
    assert w.shape == shape
    assert abs(w.std() / target - 1) < 0.03
    assert abs(w.mean()) < 0.03 * target
    if uniform:
        assert np.all(np.abs(w) <= math.sqrt(3) * target)


def test_uniform_bound_equals_torch():
    # torch's bound for kaiming_uniform(relu, fan_in) on a conv weight is sqrt(6 / fan_in).
    t = torch.empty(CONV, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(t, nonlinearity="relu")
    w = kaiming_uniform(CONV, np.random.default_rng(0))
    bound = math.sqrt(6 / (32 * 9))
    assert np.abs(w).max() <= bound and float(t.abs().max()) <= bound
    assert np.abs(w).max() > 0.99 * bound


def test_rejects_1d_and_bad_mode():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        xavier_uniform((5,), rng)
    with pytest.raises(ValueError):
        kaiming_normal((5, 5), rng, mode="fan_avg")
