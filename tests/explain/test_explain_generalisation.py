"""The generalisation topics (global pooling, residual learning, fitting) on the real
Fashion-MNIST, in quick mode: each claim's property asserted from the measured numbers."""

import itertools
import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available",
)


def test_global_pooling_head_is_tiny_and_as_accurate(run_quick):
    numbers = run_quick("global-pooling")["numbers"]
    gap, fc = numbers["gap"], numbers["fc"]
    assert gap["head_params"] < 0.05 * fc["head_params"]
    assert gap["model_params"] < fc["model_params"]
    assert gap["test_acc"] >= fc["test_acc"] - 0.02
    assert gap["test_acc"] > 0.7 and fc["test_acc"] > 0.7  # both really learned


def test_residual_shortcuts_remove_the_degradation(run_quick):
    report = run_quick("residual")
    errors = report["numbers"]["training_error"]
    shallow, deep, residual = errors["plain-8"], errors["plain-32"], errors["residual-32"]
    assert deep >= shallow + 0.10  # the deeper plain net fits its training set worse
    assert residual <= shallow + 0.02  # the same depth with shortcuts does not
    losses = report["numbers"]["train_loss_curves"]
    assert losses["residual-32"][-1] < losses["plain-32"][-1]
    assert len(report["figures"]) == 1


def test_fitting_data_size_model_size_and_early_stopping(run_quick):
    report = run_quick("fitting")
    by_data = report["numbers"]["data_size"]
    gaps = by_data["gap"]
    assert all(a > b for a, b in itertools.pairwise(gaps))
    assert by_data["test_error"][-1] < by_data["test_error"][0]

    by_model = report["numbers"]["model_size"]
    train, test, gap = by_model["train_error"], by_model["test_error"], by_model["gap"]
    assert train[0] >= 0.15 and gap[0] <= 0.10  # the tiny model under-fits
    assert train[-1] <= 0.01 and gap[-1] >= 0.15  # the large one over-fits
    assert test[-2] - test[-1] < 0.5 * (test[0] - test[1])  # test error levels off

    stopping = report["numbers"]["early_stopping"]
    assert stopping["stopped_at_epoch"] < stopping["max_epochs"]
    assert stopping["val_loss_min_epoch"] == stopping["stopped_at_epoch"] - stopping["patience"]
    assert stopping["restored_test_loss"] < stopping["last_epoch_test_loss"]
    assert stopping["restored_test_acc"] > 0.7  # the restored weights are a trained model
    assert len(report["figures"]) == 3
