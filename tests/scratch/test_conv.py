"""Tests of cnnlab.scratch.conv: im2col/col2im against unfold/fold, finite-difference gradient
checks of convolution and pooling, and float64 parity with torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.scratch import conv as C
from cnnlab.scratch.gradcheck import numerical_gradient, relative_error

TOL = {"rtol": 1e-9, "atol": 1e-10}

# (C_in, C_out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (3, 4, 3, 1, 0, 1, 1),
    (3, 4, 3, 2, 1, 1, 1),
    (2, 3, (2, 3), (2, 1), (1, 0), 1, 1),
    (2, 2, 3, 1, 2, 2, 1),
    (4, 6, 3, 1, 1, 1, 2),
    (4, 4, 3, 2, 1, 1, 4),  # depthwise
    (4, 8, 3, 1, 1, (2, 1), 4),  # depthwise with channel multiplier 2
]
POOL_CASES = [(2, None, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 1)), (3, 2, 1)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def distinct(rng, shape):
    """A random permutation of values in [0, 1) spaced far wider than the finite-difference step:
    no ties in any max-pool window, and small enough to keep rounding error below 1e-6."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape) / size


def torch_grads(fn, arrays, dout):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def conv_inputs(rng, case, n=2, size=(6, 7)):
    c_in, c_out, kernel, _, _, _, groups = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.normal(size=(n, c_in, *size))
    w = rng.normal(size=(c_out, c_in // groups, kh, kw))
    return x, w, rng.normal(size=c_out)


# ---- im2col / col2im -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_col2im_match_unfold_fold(case, rng):
    _, _, kernel, stride, padding, dilation, _ = case
    x = rng.normal(size=(2, 3, 6, 7))
    cols = C.im2col(x, kernel, stride, padding, dilation)
    args = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    np.testing.assert_allclose(cols, F.unfold(torch.tensor(x), **args).numpy(), **TOL)
    back = C.col2im(cols, x.shape, kernel, stride, padding, dilation)
    expected = F.fold(torch.tensor(cols), output_size=x.shape[2:], **args).numpy()
    np.testing.assert_allclose(back, expected, **TOL)


def test_col2im_is_adjoint_of_im2col(rng):
    # <im2col(x), y> == <x, col2im(y)> is what makes col2im the right backward.
    x = rng.normal(size=(2, 3, 5, 5))
    y = rng.normal(size=C.im2col(x, 3, 1, 1, 1).shape)
    lhs = np.sum(C.im2col(x, 3, 1, 1, 1) * y)
    rhs = np.sum(x * C.col2im(y, x.shape, 3, 1, 1, 1))
    assert abs(lhs - rhs) < 1e-10


# ---- convolution ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradcheck(case, rng):
    x, w, b = conv_inputs(rng, case, n=2, size=(5, 5))
    stride, padding, dilation, groups = case[3:]

    def f():
        return C.conv_forward(x, w, b, stride, padding, dilation, groups)[0]

    out, cache = C.conv_forward(x, w, b, stride, padding, dilation, groups)
    dout = rng.normal(size=out.shape)
    for analytic, param in zip(C.conv_backward(dout, cache), [x, w, b], strict=True):
        assert relative_error(analytic, numerical_gradient(f, param, dout)) < 1e-6


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_torch(case, bias, rng):
    x, w, b = conv_inputs(rng, case)
    stride, padding, dilation, groups = case[3:]
    out, cache = C.conv_forward(x, w, b if bias else None, stride, padding, dilation, groups)
    dout = rng.normal(size=out.shape)
    grads = C.conv_backward(dout, cache)

    def torch_conv(*tensors):
        return F.conv2d(*tensors, stride=stride, padding=padding, dilation=dilation, groups=groups)

    t_out, t_grads = torch_grads(torch_conv, [x, w, b] if bias else [x, w], dout)
    np.testing.assert_allclose(out, t_out, **TOL)
    for g, tg in zip(grads, t_grads, strict=False):
        np.testing.assert_allclose(g, tg, **TOL)
    if not bias:
        assert grads[2] is None


def test_conv_rejects_mismatched_groups(rng):
    with pytest.raises(ValueError):
        C.conv_forward(rng.normal(size=(1, 3, 4, 4)), rng.normal(size=(4, 1, 3, 3)), groups=2)


def test_conv_keeps_dtype(rng):
    x, w = rng.normal(size=(1, 2, 5, 5)).astype(np.float32), np.ones((3, 2, 3, 3), np.float32)
    out, cache = C.conv_forward(x, w, np.zeros(3, np.float32), padding=1)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in C.conv_backward(np.ones_like(out), cache))


# ---- pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "padding"), POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradcheck(kind, kernel, stride, padding, rng):
    forward = getattr(C, f"{kind}_pool_forward")
    backward = getattr(C, f"{kind}_pool_backward")
    x = distinct(rng, (2, 3, 6, 6))
    out, cache = forward(x, kernel, stride, padding)
    dout = rng.normal(size=out.shape)
    numeric = numerical_gradient(lambda: forward(x, kernel, stride, padding)[0], x, dout)
    assert relative_error(backward(dout, cache), numeric) < 1e-6


@pytest.mark.parametrize(("kernel", "stride", "padding"), POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_matches_torch(kind, kernel, stride, padding, rng):
    forward = getattr(C, f"{kind}_pool_forward")
    backward = getattr(C, f"{kind}_pool_backward")
    torch_pool = {"max": F.max_pool2d, "avg": F.avg_pool2d}[kind]
    x = rng.normal(size=(2, 3, 7, 6))
    out, cache = forward(x, kernel, stride, padding)
    dout = rng.normal(size=out.shape)
    t_out, (t_dx,) = torch_grads(lambda t: torch_pool(t, kernel, stride, padding), [x], dout)
    np.testing.assert_allclose(out, t_out, **TOL)
    np.testing.assert_allclose(backward(dout, cache), t_dx, **TOL)


def test_max_pool_ties_go_to_first_max():
    x = np.ones((1, 1, 2, 2))
    _, cache = C.max_pool_forward(x, 2)
    dx = C.max_pool_backward(np.array([[[[5.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[5.0, 0.0], [0.0, 0.0]]]])


def test_max_pool_after_relu_ties_match_torch(rng):
    # After a ReLU whole windows are 0: every tie must go where PyTorch sends it (the first).
    x = np.maximum(rng.normal(size=(3, 4, 9, 8)), 0)
    x[:, :, 2:5, 2:5] = 0.75
    for args in [(2, 2, 0), (3, 2, 1), (3, 1, 1)]:
        out, cache = C.max_pool_forward(x, *args)
        dout = rng.normal(size=out.shape)
        t_out, (t_dx,) = torch_grads(lambda t, args=args: F.max_pool2d(t, *args), [x], dout)
        np.testing.assert_array_equal(out, t_out)
        np.testing.assert_allclose(C.max_pool_backward(dout, cache), t_dx, **TOL)


def test_conv_and_pooling_keep_float32_and_can_skip_dx(rng):
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    out, cache = C.conv_forward(x, w, np.zeros(4, np.float32), padding=1)
    dx, dw, db = C.conv_backward(np.ones_like(out), cache)
    assert {a.dtype for a in (out, dx, dw, db)} == {np.dtype(np.float32)}
    skipped, dw_only, _ = C.conv_backward(np.ones_like(out), cache, input_grad=False)
    assert skipped is None
    np.testing.assert_array_equal(dw_only, dw)
    for kind in ("max", "avg"):
        pooled, pool_cache = getattr(C, f"{kind}_pool_forward")(out, 2)
        back = getattr(C, f"{kind}_pool_backward")(np.ones_like(pooled), pool_cache)
        assert pooled.dtype == back.dtype == np.float32


def test_global_avg_pool(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    out, cache = C.global_avg_pool_forward(x)
    dout = rng.normal(size=out.shape)
    dx = C.global_avg_pool_backward(dout, cache)
    t_out, (t_dx,) = torch_grads(lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1), [x], dout)
    np.testing.assert_allclose(out, t_out, **TOL)
    np.testing.assert_allclose(dx, t_dx, **TOL)
    numeric = numerical_gradient(lambda: C.global_avg_pool_forward(x)[0], x, dout)
    assert relative_error(dx, numeric) < 1e-6
