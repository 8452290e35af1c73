"""The optimisation topics of `cnnlab explain` (BatchNorm, batch size and the learning rate): each
runs in quick mode and its property holds on the measured numbers."""

from __future__ import annotations

import math
import os

import pytest

needs_data = pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available",
)


@needs_data
def test_batchnorm_train_and_eval_statistics_and_training_speed(run_quick):
    numbers = run_quick("batchnorm")["numbers"]
    stats = numbers["statistics"]
    assert stats["scratch_vs_torch_max_difference"] < 1e-10
    assert stats["running_mean_error_in_stds"] < 0.05
    assert stats["running_var_relative_error"] < 0.1
    for mode in ("train_mode", "shifted_train_mode"):
        assert all(abs(m) < 1e-6 for m in stats[mode]["mean"])
        assert all(abs(s - 1) < 0.01 for s in stats[mode]["std"])
    # Eval mode keeps the training statistics: the shifted batch stays shifted and stretched.
    assert all(1.5 < m < 2.5 for m in stats["shifted_eval_mode"]["mean"])
    assert all(2.5 < s < 3.5 for s in stats["shifted_eval_mode"]["std"])
    final = numbers["training"]["final_loss"]
    for speed in ("normal", "large"):
        assert final[f"bn_lr_{speed}"] < 0.75 * final[f"plain_lr_{speed}"]
    assert final["bn_lr_large"] < 0.8 * math.log(10)


@needs_data
def test_gradient_noise_falls_as_one_over_batch_size_and_the_lr_range_test(run_quick):
    report = run_quick("batch-size")
    numbers = report["numbers"]
    assert abs(numbers["log_log_slope"] + 1) < 0.15
    variance = list(numbers["gradient_variance"].values())
    assert variance == sorted(variance, reverse=True)
    test = numbers["lr_range_test"]
    assert test["lowest_loss"] < 0.9 * test["first_loss"]
    assert test["stopped_early"] or test["last_loss"] > 1.5 * test["lowest_loss"]
    assert test["suggested_lr"] is not None
    assert test["suggested_lr"] < test["lr_at_lowest_loss"]
    assert len(report["figures"]) == 2
