"""Tests of cnnlab.scratch.layers: finite-difference gradient checks and float64 parity with
torch.nn.functional, forward and backward, plus the statistics of inverted dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.scratch import layers as L
from cnnlab.scratch.gradcheck import numerical_gradient, relative_error

TOL = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def away_from_zero(rng, shape):
    """Values with |v| in [0.1, 1]: finite differences never cross the ReLU kink."""
    return rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def torch_grads(fn, arrays, dout):
    """Forward through `fn` on float64 tensors, backward with `dout`; -> (out, grads)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


# ---- linear --------------------------------------------------------------------------------


def test_linear_gradcheck(rng):
    x, w, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    dout = rng.normal(size=(3, 4))
    dx, dw, db = L.linear_backward(dout, L.linear_forward(x, w, b)[1])

    def f():
        return L.linear_forward(x, w, b)[0]

    for analytic, param in [(dx, x), (dw, w), (db, b)]:
        assert relative_error(analytic, numerical_gradient(f, param, dout)) < 1e-6


def test_linear_matches_torch(rng):
    x, w, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    dout = rng.normal(size=(3, 4))
    out, cache = L.linear_forward(x, w, b)
    grads = L.linear_backward(dout, cache)
    t_out, t_grads = torch_grads(F.linear, [x, w, b], dout)
    np.testing.assert_allclose(out, t_out, **TOL)
    for g, tg in zip(grads, t_grads, strict=True):
        np.testing.assert_allclose(g, tg, **TOL)


def test_linear_without_bias(rng):
    x, w = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    out, cache = L.linear_forward(x, w, None)
    np.testing.assert_allclose(out, x @ w.T, **TOL)
    assert L.linear_backward(np.ones_like(out), cache)[2] is None


# ---- activations ---------------------------------------------------------------------------

ACTIVATIONS = [
    ("relu", (L.relu_forward, L.relu_backward), F.relu),
    (
        "leaky_relu",
        (lambda x: L.leaky_relu_forward(x, 0.1), L.leaky_relu_backward),
        lambda t: F.leaky_relu(t, 0.1),
    ),
    ("sigmoid", (L.sigmoid_forward, L.sigmoid_backward), torch.sigmoid),
    ("tanh", (L.tanh_forward, L.tanh_backward), torch.tanh),
]


@pytest.mark.parametrize(("name", "pair", "torch_fn"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_gradcheck(name, pair, torch_fn, rng):
    forward, backward = pair
    x, dout = away_from_zero(rng, (3, 4)), rng.normal(size=(3, 4))
    dx = backward(dout, forward(x)[1])
    assert relative_error(dx, numerical_gradient(lambda: forward(x)[0], x, dout)) < 1e-6


@pytest.mark.parametrize(("name", "pair", "torch_fn"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_matches_torch(name, pair, torch_fn, rng):
    forward, backward = pair
    x, dout = rng.normal(size=(3, 4)) * 3, rng.normal(size=(3, 4))
    out, cache = forward(x)
    t_out, (t_dx,) = torch_grads(torch_fn, [x], dout)
    np.testing.assert_allclose(out, t_out, **TOL)
    np.testing.assert_allclose(backward(dout, cache), t_dx, **TOL)


def test_sigmoid_is_stable_for_large_inputs():
    out, _ = L.sigmoid_forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_activations_keep_dtype():
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    for forward, backward in [a[1] for a in ACTIVATIONS]:
        out, cache = forward(x)
        assert out.dtype == np.float32
        assert backward(np.ones_like(x), cache).dtype == np.float32


# ---- flatten -------------------------------------------------------------------------------


def test_flatten_roundtrip(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    out, cache = L.flatten_forward(x)
    np.testing.assert_array_equal(out, x.reshape(2, 60))
    dout = rng.normal(size=out.shape)
    dx = L.flatten_backward(dout, cache)
    assert dx.shape == x.shape
    assert relative_error(dx, numerical_gradient(lambda: L.flatten_forward(x)[0], x, dout)) < 1e-6


# ---- dropout -------------------------------------------------------------------------------


def test_dropout_eval_is_identity(rng):
    x = rng.normal(size=(4, 5))
    out, cache = L.dropout_forward(x, 0.5, train=False, rng=rng)
    np.testing.assert_array_equal(out, x)
    dout = rng.normal(size=x.shape)
    np.testing.assert_array_equal(L.dropout_backward(dout, cache), dout)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_train_statistics(p):
    x = np.ones((500, 400))
    out, cache = L.dropout_forward(x, p, train=True, rng=np.random.default_rng(1))
    dropped = out == 0
    assert abs(dropped.mean() - p) < 0.01
    np.testing.assert_allclose(out[~dropped], 1 / (1 - p))
    assert abs(out.mean() - 1.0) < 0.03
    dx = L.dropout_backward(np.full_like(x, 2.0), cache)
    np.testing.assert_array_equal(dx == 0, dropped)
    np.testing.assert_allclose(dx[~dropped], 2 / (1 - p))


def test_dropout_is_reproducible_with_seed():
    x = np.arange(100.0).reshape(10, 10)
    a, _ = L.dropout_forward(x, 0.5, True, np.random.default_rng(7))
    b, _ = L.dropout_forward(x, 0.5, True, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_dropout_gradcheck(rng):
    x, dout = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    _, cache = L.dropout_forward(x, 0.3, train=True, rng=np.random.default_rng(3))
    dx = L.dropout_backward(dout, cache)

    def f():  # the same seed reproduces the same mask on every call
        return L.dropout_forward(x, 0.3, train=True, rng=np.random.default_rng(3))[0]

    assert relative_error(dx, numerical_gradient(f, x, dout)) < 1e-6


def test_dropout_rejects_bad_p(rng):
    with pytest.raises(ValueError):
        L.dropout_forward(np.ones(3), 1.5, True, rng)
