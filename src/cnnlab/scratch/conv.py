"""Convolution and pooling in plain NumPy, built on im2col.

im2col copies every receptive field of an (N, C, H, W) input into a column, so a convolution
becomes one matrix product and a pooling layer a reduction over one axis. col2im is its adjoint:
it adds each column back onto the positions it was read from, summing where windows overlap,
which is exactly what the backward passes need. Layouts and arguments follow
torch.nn.functional (conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d(1), unfold, fold), so
each function can be checked against PyTorch. Everything works in the dtype it is given.
"""

from __future__ import annotations

import numpy as np


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    # A dilated kernel spans d * (k - 1) + 1 pixels.
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------
# im2col / col2im, in the layout of torch.nn.functional.unfold / fold:
# columns (N, C * kh * kw, OH * OW), channel slowest, then kernel row, then kernel column.
# --------------------------------------------------------------------------------------------


def _geometry(x_shape, kernel, stride, padding, dilation):
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    oh = _output_size(x_shape[2], kh, sh, ph, dh)
    ow = _output_size(x_shape[3], kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {(kh, kw)} does not fit input {tuple(x_shape)}")
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def _offset_slices(i, j, stride, dilation, out_size):
    """The strided slices of the padded input that kernel offset (i, j) sees across all
    output positions: one slice per offset replaces a loop over pixels."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out_size
    rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
    cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
    return rows, cols


def im2col(x: np.ndarray, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """(N, C, H, W) -> (N, C * kh * kw, OH * OW), zero padding."""
    n, c = x.shape[:2]
    (kh, kw), stride, (ph, pw), dilation, out_size = _geometry(
        x.shape, kernel, stride, padding, dilation
    )
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, *out_size), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, dilation, out_size)
            cols[:, :, i, j] = xp[:, :, rows, columns]
    return cols.reshape(n, c * kh * kw, -1)


def col2im(cols: np.ndarray, x_shape, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Adjoint of im2col: (N, C * kh * kw, OH * OW) -> (N, C, H, W), summing overlaps."""
    n, c, h, w = x_shape
    (kh, kw), stride, (ph, pw), dilation, out_size = _geometry(
        x_shape, kernel, stride, padding, dilation
    )
    cols = cols.reshape(n, c, kh, kw, *out_size)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    # Within one kernel offset the strided positions are distinct, so += is safe; overlaps only
    # happen between offsets, and the loop accumulates those.
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, dilation, out_size)
            xp[:, :, rows, columns] += cols[:, :, i, j]
    return xp[:, :, ph : ph + h, pw : pw + w]


# --------------------------------------------------------------------------------------------
# Convolution (cross-correlation, as in conv2d), with groups: the channels are split into
# `groups` independent convolutions; groups == C_in is a depthwise convolution.
# --------------------------------------------------------------------------------------------


def conv_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """x (N, C_in, H, W), w (C_out, C_in / groups, kh, kw), b (C_out,) or None
    -> out (N, C_out, OH, OW)."""
    n, c_in = x.shape[:2]
    c_out, c_group, kh, kw = w.shape
    if c_in != c_group * groups or c_out % groups:
        raise ValueError(f"x {x.shape} and w {w.shape} do not fit groups={groups}")
    cols = im2col(x, (kh, kw), stride, padding, dilation)
    oh, ow = _geometry(x.shape, (kh, kw), stride, padding, dilation)[-1]
    # Each group's columns are a contiguous block because channels vary slowest in a column.
    cols_g = cols.reshape(n, groups, c_group * kh * kw, oh * ow)
    w_g = w.reshape(groups, c_out // groups, c_group * kh * kw)
    out = (w_g @ cols_g).reshape(n, c_out, oh, ow)  # (G, O, K) @ (N, G, K, L) -> (N, G, O, L)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    cache = (x.shape, w, cols_g, b is not None, (stride, padding, dilation, groups))
    return out, cache


def conv_backward(dout, cache):
    """-> (dx, dw, db), db None when the forward had no bias."""
    x_shape, w, cols_g, has_bias, (stride, padding, dilation, groups) = cache
    n, c_out = dout.shape[:2]
    dout_g = dout.reshape(n, groups, c_out // groups, -1)
    w_g = w.reshape(groups, c_out // groups, -1)
    # out = w_g @ cols_g, so each factor's gradient is dout times the other, transposed.
    dw = np.einsum("ngol,ngkl->gok", dout_g, cols_g).reshape(w.shape)
    dcols = np.swapaxes(w_g, 1, 2) @ dout_g
    dcols = dcols.reshape(n, -1, dcols.shape[-1])
    dx = col2im(dcols, x_shape, w.shape[2:], stride, padding, dilation)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Pooling: a reduction over the kh * kw entries of each window (no ceil_mode, no dilation).
# --------------------------------------------------------------------------------------------


def _pool_windows(x, kernel, stride, padding, pad_value):
    """(N, C, H, W) -> windows (N, C, kh * kw, OH * OW), plus the padded shape and output size."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    ph, pw = _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    cols = im2col(xp, kernel, stride)
    out_size = _geometry(xp.shape, kernel, stride, 0, 1)[-1]
    n, c = x.shape[:2]
    return cols.reshape(n, c, kernel[0] * kernel[1], -1), xp.shape, out_size, (kernel, stride)


def _unpool(dwindows, x_shape, padded_shape, kernel, stride, padding):
    """Send window gradients (N, C, kh * kw, L) back to the input, dropping the padding."""
    n, _, h, w = x_shape
    ph, pw = _pair(padding)
    dxp = col2im(dwindows.reshape(n, -1, dwindows.shape[-1]), padded_shape, kernel, stride)
    return dxp[:, :, ph : ph + h, pw : pw + w]


def max_pool_forward(x, kernel, stride=None, padding=0):
    """Max over each window; stride defaults to the kernel. Padding is -inf, so it never wins."""
    windows, padded_shape, (oh, ow), (kernel, stride) = _pool_windows(
        x, kernel, stride, padding, -np.inf
    )
    # argmax keeps the first of tied maxima, in row-major window order, as PyTorch does.
    arg = np.argmax(windows, axis=2)[:, :, None]
    out = np.take_along_axis(windows, arg, axis=2).reshape(*x.shape[:2], oh, ow)
    cache = (x.shape, padded_shape, arg, windows.shape, kernel, stride, padding)
    return out, cache


def max_pool_backward(dout, cache):
    """The whole gradient of a window goes to the entry that was its maximum."""
    x_shape, padded_shape, arg, windows_shape, kernel, stride, padding = cache
    dwindows = np.zeros(windows_shape, dtype=dout.dtype)
    n, c = dout.shape[:2]
    np.put_along_axis(dwindows, arg, dout.reshape(n, c, 1, -1), axis=2)
    return _unpool(dwindows, x_shape, padded_shape, kernel, stride, padding)


def avg_pool_forward(x, kernel, stride=None, padding=0):
    """Mean over each window, padding zeros counted in the divisor (count_include_pad=True)."""
    windows, padded_shape, (oh, ow), (kernel, stride) = _pool_windows(x, kernel, stride, padding, 0)
    out = windows.mean(axis=2).reshape(*x.shape[:2], oh, ow)
    return out, (x.shape, padded_shape, windows.shape, kernel, stride, padding)


def avg_pool_backward(dout, cache):
    """Each window entry receives an equal share 1 / (kh * kw) of the window's gradient."""
    x_shape, padded_shape, windows_shape, kernel, stride, padding = cache
    n, c, area = windows_shape[:3]
    share = dout.reshape(n, c, 1, -1) / area
    dwindows = np.broadcast_to(share, windows_shape)
    return _unpool(dwindows, x_shape, padded_shape, kernel, stride, padding)


def global_avg_pool_forward(x):
    """(N, C, H, W) -> (N, C): the mean of each feature map, adaptive_avg_pool2d(1) flattened."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dout, cache):
    h, w = cache[2:]
    return np.broadcast_to(dout[:, :, None, None] / (h * w), cache).copy()
