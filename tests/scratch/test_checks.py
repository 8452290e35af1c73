"""The gradient-check catalogue behind `cnnlab gradcheck`: every component passes at 1e-6 for
several seeds, and a broken backward pass (in a layer or deep inside a network) fails."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.scratch import checks as K
from cnnlab.scratch import conv as C
from cnnlab.scratch import layers as L
from cnnlab.scratch import losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_component_passes(seed):
    results = K.run_checks(seed=seed)
    assert [r.component for r in results] == list(K.CHECKS)
    assert len(results) >= 30
    failed = {r.component: r.max_error for r in results if not r.passed}
    assert not failed
    assert all(r.tolerance == 1e-6 for r in results)


def test_networks_check_the_input_and_every_parameter():
    (lenet,) = K.run_checks(["lenet"])
    assert lenet.gradients[0] == "x"
    assert len(lenet.gradients) == 1 + 10  # 5 weighted layers, weight and bias each


def _wrong_sigmoid_backward(dout, cache):
    return dout * cache  # forgot the (1 - s) factor


_avg_pool_backward = C.avg_pool_backward
_softmax_cross_entropy = losses.softmax_cross_entropy
_max_pool_backward = C.max_pool_backward


def _wrong_avg_pool_backward(dout, cache):
    return _avg_pool_backward(dout, cache) * 1.01  # a 1% error, deep inside LeNet


def _wrong_softmax_ce(logits, labels):
    loss, grad = _softmax_cross_entropy(logits, labels)
    return loss, grad * len(labels)  # forgot the mean over the batch


@pytest.mark.parametrize(
    ("module", "name", "wrong", "components"),
    [
        (L, "sigmoid_backward", _wrong_sigmoid_backward, ["sigmoid", "lenet"]),
        (C, "avg_pool_backward", _wrong_avg_pool_backward, ["avg_pool", "lenet", "lenet_bn"]),
        (losses, "softmax_cross_entropy", _wrong_softmax_ce, ["softmax_cross_entropy"]),
    ],
)
def test_a_wrong_gradient_fails(monkeypatch, module, name, wrong, components):
    monkeypatch.setattr(module, name, wrong)
    results = K.run_checks(components)
    assert [r.component for r in results] == components
    assert not any(r.passed for r in results)
    assert all(r.max_error > 1e-3 for r in results)


def test_a_wrong_max_pool_routing_fails_in_the_relu_network(monkeypatch):
    def to_every_entry(dout, cache):
        x_shape, padded_shape, offsets, arg, padding = cache
        # Every window's gradient to its first entry instead of its maximum.
        return _max_pool_backward(dout, (x_shape, padded_shape, offsets, arg * 0, padding))

    monkeypatch.setattr(C, "max_pool_backward", to_every_entry)
    assert not any(r.passed for r in K.run_checks(["max_pool", "lenet_modern"]))


def test_unknown_component_is_refused():
    with pytest.raises(ValueError, match=r"unknown component.*nope.*known: linear"):
        K.run_checks(["nope"])


def test_relative_error_treats_joint_zeros_as_equal():
    from cnnlab.scratch.gradcheck import relative_error

    assert relative_error(np.array([1e-17]), np.array([2e-10])) == pytest.approx(1, abs=1e-6)
    assert relative_error(np.array([1e-17]), np.array([2e-10]), zero=1e-8) == 0.0
    assert relative_error(np.array([1e-17]), np.array([2e-7]), zero=1e-8) > 0.99
