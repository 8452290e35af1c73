"""Losses, metric and penalties from cnnlab.scratch.losses against finite differences and
against torch.nn.functional (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.scratch.gradcheck import numerical_gradient, relative_error
from cnnlab.scratch.losses import (
    binary_cross_entropy_with_logits,
    l1,
    l1_penalty,
    l2_penalty,
    mse,
    multiclass_hinge,
    smooth_l1,
    softmax_cross_entropy,
    zero_one_error,
)

ONE = np.array(1.0)


def _classification(seed=0, n=4, k=5):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=2.0, size=(n, k)), rng.integers(0, k, size=n)


def _regression(seed=0, shape=(3, 4)):
    rng = np.random.default_rng(seed)
    # Differences of about +-0.5 .. 3, never 0: l1 and smooth_l1 have no kink in reach of h.
    target = rng.normal(size=shape)
    diff = rng.uniform(0.3, 3.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return target + diff, target


def _check_grad(loss_fn, x, *args, **kwargs):
    _, grad = loss_fn(x, *args, **kwargs)
    num = numerical_gradient(lambda: loss_fn(x, *args, **kwargs)[0], x, ONE)
    assert relative_error(grad, num) < 1e-6


def _torch_pair(torch_fn, x, *args, **kwargs):
    tx = torch.tensor(x, requires_grad=True)
    loss = torch_fn(tx, *args, **kwargs)
    loss.backward()
    return loss.item(), tx.grad.numpy()


def _assert_matches(ours, theirs):
    assert ours[0] == pytest.approx(theirs[0], rel=1e-9, abs=1e-15)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-9, atol=1e-15)


def test_softmax_cross_entropy():
    logits, labels = _classification()
    _check_grad(softmax_cross_entropy, logits, labels)
    theirs = _torch_pair(F.cross_entropy, logits, torch.tensor(labels))
    _assert_matches(softmax_cross_entropy(logits, labels), theirs)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 999.0]])
    labels = np.array([0, 2])
    loss, grad = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    _assert_matches((loss, grad), _torch_pair(F.cross_entropy, logits, torch.tensor(labels)))


def test_binary_cross_entropy_with_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(4, 3))
    targets = rng.integers(0, 2, size=(4, 3)).astype(np.float64)
    targets[0, 0] = 0.3  # soft targets are allowed too
    _check_grad(binary_cross_entropy_with_logits, logits, targets)
    theirs = _torch_pair(F.binary_cross_entropy_with_logits, logits, torch.tensor(targets))
    _assert_matches(binary_cross_entropy_with_logits(logits, targets), theirs)

    huge = np.array([[800.0, -800.0]])
    loss, grad = binary_cross_entropy_with_logits(huge, np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(800.0) and np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (mse, F.mse_loss, {}),
        (l1, F.l1_loss, {}),
        (smooth_l1, F.smooth_l1_loss, {"beta": 1.0}),
        (smooth_l1, F.smooth_l1_loss, {"beta": 2.0}),
        (smooth_l1, F.smooth_l1_loss, {"beta": 0.0}),
    ],
)
def test_regression_losses(ours, theirs, kwargs):
    pred, target = _regression()
    _check_grad(ours, pred, target, **kwargs)
    _assert_matches(
        ours(pred, target, **kwargs), _torch_pair(theirs, pred, torch.tensor(target), **kwargs)
    )


def test_l1_gradient_is_zero_at_zero():
    pred = np.array([1.0, 2.0, 3.0])
    target = np.array([1.0, 0.0, 4.0])
    _, grad = l1(pred, target)
    np.testing.assert_array_equal(grad, np.array([0.0, 1.0, -1.0]) / 3)
    _assert_matches(l1(pred, target), _torch_pair(F.l1_loss, pred, torch.tensor(target)))


@pytest.mark.parametrize("margin", [1.0, 0.5, 3.0])
def test_multiclass_hinge(margin):
    scores, labels = _classification(seed=2, n=6, k=4)
    _check_grad(multiclass_hinge, scores, labels, margin=margin)
    theirs = _torch_pair(F.multi_margin_loss, scores, torch.tensor(labels), margin=margin)
    _assert_matches(multiclass_hinge(scores, labels, margin=margin), theirs)


def test_zero_one_error():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [5.0, 0.0, 0.0], [0.0, 9.0, 1.0]])
    assert zero_one_error(logits, np.array([0, 2, 1, 1])) == pytest.approx(0.25)


@pytest.mark.parametrize("penalty", [l1_penalty, l2_penalty])
def test_penalties(penalty):
    rng = np.random.default_rng(3)
    w = rng.uniform(0.2, 2.0, size=(3, 4)) * rng.choice([-1.0, 1.0], size=(3, 4))
    _check_grad(penalty, w, 0.3)
    value, _ = penalty(w, 0.3)
    expected = 0.3 * np.abs(w).sum() if penalty is l1_penalty else 0.15 * np.sum(w**2)
    assert value == pytest.approx(expected, rel=1e-12)
