"""The global-pooling topic on the real Fashion-MNIST, in quick mode: a GAP head against an FC
head, the property asserted from the measured numbers."""

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
