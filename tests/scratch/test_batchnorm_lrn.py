"""Batch normalisation and LRN from cnnlab.scratch.batchnorm against finite differences and
against PyTorch (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.scratch.batchnorm import (
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    lrn_backward,
    lrn_forward,
)
from cnnlab.scratch.gradcheck import numerical_gradient, relative_error

SHAPES = [(5, 3), (3, 2, 3, 2)]
BACKWARDS = [batchnorm_backward, batchnorm_backward_graph]


def _setup(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(1.5, 2.0, size=shape)
    gamma = rng.normal(1.0, 0.5, size=c)
    beta = rng.normal(0.0, 0.5, size=c)
    rm = rng.normal(size=c)
    rv = rng.uniform(0.5, 2.0, size=c)
    dout = rng.normal(size=shape)
    return x, gamma, beta, rm, rv, dout


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("backward", BACKWARDS)
def test_batchnorm_gradcheck(shape, train, backward):
    x, gamma, beta, rm, rv, dout = _setup(shape)

    def f():
        # Fresh copies: the forward must not drift the running statistics during the check.
        return batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), train)[0]

    _, cache = batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), train)
    dx, dgamma, dbeta = backward(dout, cache)
    assert relative_error(dx, numerical_gradient(f, x, dout)) < 1e-6
    assert relative_error(dgamma, numerical_gradient(f, gamma, dout)) < 1e-6
    assert relative_error(dbeta, numerical_gradient(f, beta, dout)) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_backwards_agree(shape, train):
    x, gamma, beta, rm, rv, dout = _setup(shape, seed=1)
    _, cache = batchnorm_forward(x, gamma, beta, rm, rv, train)
    ours, graph = batchnorm_backward(dout, cache), batchnorm_backward_graph(dout, cache)
    for a, b in zip(ours, graph, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backward", BACKWARDS)
def test_batchnorm_train_matches_torch(shape, backward):
    x, gamma, beta, rm, rv, dout = _setup(shape, seed=2)
    momentum, eps = 0.2, 1e-3
    trm, trv = torch.tensor(rm), torch.tensor(rv)  # copies, before ours update in place
    out, cache = batchnorm_forward(x, gamma, beta, rm, rv, True, momentum, eps)
    dx, dgamma, dbeta = backward(dout, cache)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tout = F.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=momentum, eps=eps)
    tout.backward(torch.tensor(dout))

    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_eval_matches_torch(shape):
    x, gamma, beta, rm, rv, dout = _setup(shape, seed=3)
    rm0, rv0 = rm.copy(), rv.copy()
    out, cache = batchnorm_forward(x, gamma, beta, rm, rv, False)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    # Eval mode must leave the running statistics alone.
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tout = F.batch_norm(tx, torch.tensor(rm), torch.tensor(rv), tg, tb, training=False)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dgamma, tg.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dbeta, tb.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_batchnorm_rejects_single_value_per_channel():
    x, gamma, beta, rm, rv, _ = _setup((1, 3))
    with pytest.raises(ValueError):
        batchnorm_forward(x, gamma, beta, rm, rv, True)


# Large alpha so the normalisation visibly matters; sizes cover odd, even and wider-than-C.
LRN_CASES = [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.75, 2.0), (4, 0.8, 0.6, 1.0), (9, 1.0, 1.2, 0.5)]


@pytest.mark.parametrize(("size", "alpha", "beta", "k"), LRN_CASES)
def test_lrn_gradcheck(size, alpha, beta, k):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 3, 2))
    dout = rng.normal(size=x.shape)
    _, cache = lrn_forward(x, size, alpha, beta, k)
    dx = lrn_backward(dout, cache)
    num = numerical_gradient(lambda: lrn_forward(x, size, alpha, beta, k)[0], x, dout)
    assert relative_error(dx, num) < 1e-6


@pytest.mark.parametrize(("size", "alpha", "beta", "k"), LRN_CASES)
def test_lrn_matches_torch(size, alpha, beta, k):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 3, 2))
    dout = rng.normal(size=x.shape)
    out, cache = lrn_forward(x, size, alpha, beta, k)
    dx = lrn_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    tout = F.local_response_norm(tx, size, alpha=alpha, beta=beta, k=k)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
