"""The loss-function and multi-label explain topics, run in quick mode: each test checks the
property the topic demonstrates from its measured numbers, then the verdict, the figure and that
the report is JSON."""

import pytest


def test_losses(run_quick):
    report = run_quick("losses")
    assert len(report["figures"]) == 1
    numbers = report["numbers"]
    saturation = numbers["saturation"]
    # MSE on a sigmoid: a confidently wrong logit gets a vanishing gradient, CE about -1.
    assert abs(saturation["mse_grad_at_z_minus_8"]) < 1e-3
    assert saturation["ce_grad_at_z_minus_8"] == pytest.approx(-1, abs=1e-3)
    pairs = zip(saturation["mse_grad"], saturation["ce_grad"], strict=True)
    assert all(abs(m) <= abs(c) for m, c in pairs)
    start = saturation["bad_start"]
    assert start["mse"]["final_accuracy"] == 0.0 and start["mse"]["final_weight"] < -5
    assert start["ce"]["accuracy_after_5"] == 1.0
    # Outliers drag the L2 line; L1 and smooth L1 stay near y = 2x + 1.
    fits = numbers["outliers"]
    assert fits["l2"]["error"] > 1.0
    assert fits["l1"]["error"] < 0.1 and fits["smooth_l1"]["error"] < 0.25
    # The hinge loss is exactly zero with an exactly zero gradient; CE keeps pushing.
    hinge, ce = numbers["margins"]["hinge"], numbers["margins"]["ce"]
    assert hinge["final_loss"] == 0.0 and hinge["final_max_abs_grad"] == 0.0
    assert hinge["weight_norm_final"] == hinge["weight_norm_half"]
    assert hinge["min_margin"] >= 1.0
    assert ce["final_loss"] > 0 and ce["final_max_abs_grad"] > 0
    assert ce["weight_norm_final"] > ce["weight_norm_half"]
    assert ce["min_margin"] > hinge["min_margin"]


def test_multi_label(run_quick):
    report = run_quick("multi-label")
    assert len(report["figures"]) == 1
    numbers = report["numbers"]
    multi, single = numbers["multi_label"], numbers["single_label"]
    soft, sig = multi["softmax"], multi["sigmoid"]
    # Softmax shares one unit of probability between two present labels; sigmoids do not.
    assert soft["prob_sum_two_labels"] == pytest.approx(1.0, abs=1e-9)
    assert soft["weaker_present_prob_max"] <= 0.5
    assert sig["prob_sum_two_labels"] > 1.5
    assert sig["weaker_present_prob_mean"] > 0.8
    assert multi["sigmoid_threshold"]["macro_f1"] > 0.9
    assert multi["sigmoid_threshold"]["exact_match"] > multi["softmax_threshold"]["exact_match"]
    assert multi["sigmoid_threshold"]["macro_f1"] > multi["softmax_threshold"]["macro_f1"]
    # With one label per example both heads do (about) equally well.
    assert min(single.values()) > 0.95
    assert abs(single["sigmoid_accuracy"] - single["softmax_accuracy"]) < 0.03
