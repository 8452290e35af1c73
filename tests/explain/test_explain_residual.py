"""The residual topic on the real Fashion-MNIST, in quick mode: plain nets against a residual
one, the property asserted from the measured numbers."""

import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("CNNLAB_DATA"),
    reason="CNNLAB_DATA is unset: the real Fashion-MNIST is not available",
)


def test_residual_shortcuts_remove_the_degradation(run_quick):
    report = run_quick("residual")
    errors = report["numbers"]["training_error"]
    shallow, deep, residual = errors["plain-8"], errors["plain-32"], errors["residual-32"]
    assert deep >= shallow + 0.10  # the deeper plain net fits its training set worse
    assert residual <= shallow + 0.02  # the same depth with shortcuts does not
    losses = report["numbers"]["train_loss_curves"]
    assert losses["residual-32"][-1] < losses["plain-32"][-1]
    assert len(report["figures"]) == 1
