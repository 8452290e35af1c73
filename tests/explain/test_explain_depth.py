"""The depth topics of `cnnlab explain` (vanishing and exploding gradients, initialisation): each
runs in quick mode and its property holds on the measured numbers."""

from __future__ import annotations

import math


def test_sigmoid_gradients_vanish_and_clipping_stops_an_explosion(run_quick):
    numbers = run_quick("vanishing-gradients")["numbers"]
    ratios = numbers["first_over_last_gradient_ratio"]
    assert ratios["sigmoid"] < 1e-3
    for variant in ("relu_kaiming", "sigmoid_batchnorm", "sigmoid_residual"):
        assert 0.1 <= ratios[variant] <= 10
    plain, clipped = numbers["explosion_without_clipping"], numbers["explosion_with_clipping"]
    assert not plain["all_finite"] or plain["largest_finite_loss"] > 1e6 * plain["first_loss"]
    assert clipped["all_finite"]
    assert clipped["last_loss"] < clipped["first_loss"]
    assert clipped["clipped_steps"] > 0


def test_initialisation_decides_whether_activations_survive_depth(run_quick):
    numbers = run_quick("initialisation")["numbers"]
    assert numbers["zero_init_unit_spread"] == 0.0
    assert numbers["zero_init_output_abs_max"] == 0.0
    ratio, factor = numbers["last_over_first_std"], numbers["factor_per_layer"]
    assert ratio["normal_0.01"] < 1e-6
    assert ratio["normal_1"] > 1e6
    assert abs(factor["xavier"] - 1 / math.sqrt(2)) < 0.05
    assert 0.5 <= ratio["kaiming"] <= 2.0
