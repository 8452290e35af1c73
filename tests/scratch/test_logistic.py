"""Logistic regression: loss and gradients against torch autograd and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.scratch.gradcheck import numerical_gradient, relative_error
from cnnlab.scratch.layers import sigmoid_forward
from cnnlab.scratch.logistic import logistic_loss_and_grad, predict, train


def _data(seed=0, n=12, d=4, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * scale
    y = (rng.random(n) < 0.5).astype(np.float64)
    return rng.standard_normal(d), float(rng.standard_normal()), x, y


@pytest.mark.parametrize(("l2", "scale"), [(0.0, 1.0), (0.3, 1.0), (0.1, 30.0)])
def test_matches_torch(l2, scale):
    w, b, x, y = _data(scale=scale)
    loss, dw, db = logistic_loss_and_grad(w, b, x, y, l2)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(x) @ tw + tb
    tloss = F.binary_cross_entropy_with_logits(z, torch.tensor(y)) + 0.5 * l2 * (tw * tw).sum()
    tloss.backward()
    assert np.isfinite(loss)
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert db == pytest.approx(tb.grad.item(), rel=1e-10, abs=1e-14)


def test_gradcheck():
    w, b, x, y = _data(seed=3)
    bias = np.array([b])
    _, dw, db = logistic_loss_and_grad(w, bias[0], x, y, l2=0.2)

    def f():
        return np.array(logistic_loss_and_grad(w, bias[0], x, y, l2=0.2)[0])

    one = np.array(1.0)
    assert relative_error(dw, numerical_gradient(f, w, one)) < 1e-6
    assert relative_error(np.array([db]), numerical_gradient(f, bias, one)) < 1e-6


def test_sigmoid_the_loss_uses_is_stable():
    z = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0])
    s, _ = sigmoid_forward(z)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, torch.sigmoid(torch.tensor(z)).numpy(), rtol=1e-12)


def test_gradient_descent_separates_toy_problem():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(2.0, 0.5, (20, 2)), rng.normal(-2.0, 0.5, (20, 2))])
    y = np.concatenate([np.ones(20), np.zeros(20)])
    w, b = train(x, y, lr=0.5, steps=200)
    assert np.mean(predict(w, b, x) == y) == 1.0
    assert logistic_loss_and_grad(w, b, x, y)[0] < 0.05
