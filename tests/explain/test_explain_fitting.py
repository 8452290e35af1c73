"""The fitting topic on the real Fashion-MNIST, in quick mode: data size, model size and early
stopping, each property asserted from the measured numbers."""

import itertools
import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available",
)


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
