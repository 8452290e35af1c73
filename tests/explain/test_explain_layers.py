"""The layer topics of `cnnlab explain` (activations, dropout): each runs in quick mode and its
property holds on the measured numbers."""

from __future__ import annotations

import pytest


def test_activations_collapse_without_relu_and_fit_with_it(run_quick):
    numbers = run_quick("activations")["numbers"]
    assert numbers["collapse_relative_error"] < 1e-12
    assert numbers["affine_fit_relative_error"] < 1e-12
    assert numbers["deep_linear_mse"] >= 0.99 * numbers["best_affine_mse"]
    assert numbers["relu_mse"] < 0.1 * numbers["best_affine_mse"]


def test_inverted_dropout_keeps_the_mean(run_quick):
    numbers = run_quick("dropout")["numbers"]
    assert len(numbers["per_p"]) >= 3
    for key, row in numbers["per_p"].items():
        p = float(key.removeprefix("p="))
        assert abs(row["z"]) < 4 and abs(row["torch_z"]) < 4
        assert row["mean_ratio"] == pytest.approx(1, abs=4 * row["ratio_standard_error"])
        assert 0.85 < row["element_rms_z"] < 1.15
        assert row["plain_mean_ratio"] == pytest.approx(1 - p, abs=0.01)
        assert row["fraction_zeroed"] == pytest.approx(p, abs=0.01)
    assert numbers["train_mode_random"] is True
    assert numbers["eval_mode_identity"] is True
