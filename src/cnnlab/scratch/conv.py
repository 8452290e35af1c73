"""Convolution and pooling in plain NumPy, built on im2col.

im2col copies every receptive field of an (N, C, H, W) input into a column, so a convolution
becomes one matrix product and a pooling layer a reduction over one axis. col2im is its adjoint:
it adds each column back onto the positions it was read from, summing where windows overlap,
which is exactly what the backward passes need. Layouts and arguments follow
torch.nn.functional (conv2d, max_pool2d, avg_pool2d, adaptive_avg_pool2d(1), unfold, fold), so
each function can be checked against PyTorch. Everything works in the dtype it is given.

Internally the columns are laid out channel-major, (C, kh, kw, N, OH, OW): then the whole batch
is one (C * kh * kw, N * OH * OW) matrix and a convolution one large matrix product, instead of
N small ones, which is what makes the NumPy LeNet fast enough to train.
"""

from __future__ import annotations

import numpy as np


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    # A dilated kernel spans d * (k - 1) + 1 pixels.
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------
# Gathering windows and scattering them back: the two halves of im2col / col2im.
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


def _gather(x, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """(N, C, H, W) -> windows (C, kh, kw, N, OH, OW): windows[c, i, j, n] holds, for every
    output position, the pixel that kernel offset (i, j) reads from channel c of image n."""
    n, c = x.shape[:2]
    (kh, kw), stride, (ph, pw), dilation, out_size = _geometry(
        x.shape, kernel, stride, padding, dilation
    )
    # One channel-major copy of the (padded) input makes every slice below a plain block copy.
    padded = np.zeros((c, n, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), x.dtype)
    padded[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]] = x.transpose(1, 0, 2, 3)
    windows = np.empty((c, kh, kw, n, *out_size), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, dilation, out_size)
            windows[:, i, j] = padded[:, :, rows, columns]
    return windows


def _scatter(windows, x_shape, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Adjoint of _gather: add windows (C, kh, kw, N, OH, OW) back onto an (N, C, H, W) input,
    summing where windows overlap."""
    n, c, h, w = x_shape
    kh, kw = windows.shape[1:3]
    _, stride, (ph, pw), dilation, out_size = _geometry(
        x_shape, (kh, kw), stride, padding, dilation
    )
    padded = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=windows.dtype)
    # Within one kernel offset the strided positions are distinct, so += is safe; overlaps only
    # happen between offsets, and the loop accumulates those.
    for i in range(kh):
        for j in range(kw):
            rows, columns = _offset_slices(i, j, stride, dilation, out_size)
            padded[:, :, rows, columns] += windows[:, i, j]
    return padded[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)


# --------------------------------------------------------------------------------------------
# im2col / col2im in the layout of torch.nn.functional.unfold / fold:
# columns (N, C * kh * kw, OH * OW), channel slowest, then kernel row, then kernel column.
# --------------------------------------------------------------------------------------------


def im2col(x: np.ndarray, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """(N, C, H, W) -> (N, C * kh * kw, OH * OW), zero padding."""
    windows = _gather(x, kernel, stride, padding, dilation)
    c, kh, kw, n, oh, ow = windows.shape
    return windows.reshape(c * kh * kw, n, oh * ow).transpose(1, 0, 2)


def col2im(cols: np.ndarray, x_shape, kernel, stride=1, padding=0, dilation=1) -> np.ndarray:
    """Adjoint of im2col: (N, C * kh * kw, OH * OW) -> (N, C, H, W), summing overlaps."""
    (kh, kw), _, _, _, out_size = _geometry(x_shape, kernel, stride, padding, dilation)
    n, c = x_shape[:2]
    windows = cols.reshape(n, c, kh, kw, *out_size).transpose(1, 2, 3, 0, 4, 5)
    return _scatter(windows, x_shape, stride, padding, dilation)


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
    windows = _gather(x, (kh, kw), stride, padding, dilation)
    oh, ow = windows.shape[-2:]
    # Channels vary slowest in a column, so each group's rows are one contiguous block:
    # cols (G, C_in/G * kh * kw, N * OH * OW) and weights (G, C_out/G, C_in/G * kh * kw).
    cols = windows.reshape(groups, c_group * kh * kw, n * oh * ow)
    w_g = w.reshape(groups, c_out // groups, c_group * kh * kw)
    out = (w_g @ cols).reshape(c_out, n, oh, ow).transpose(1, 0, 2, 3)
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    cache = (x.shape, w, cols, b is not None, (stride, padding, dilation, groups))
    return out, cache


def conv_backward(dout, cache, input_grad: bool = True):
    """-> (dx, dw, db), db None when the forward had no bias, dx None with input_grad=False
    (a first layer's input needs no gradient, and dx is half the work)."""
    x_shape, w, cols, has_bias, (stride, padding, dilation, groups) = cache
    c_out, _, kh, kw = w.shape
    dout_g = dout.transpose(1, 0, 2, 3).reshape(groups, c_out // groups, -1)
    w_g = w.reshape(groups, c_out // groups, -1)
    # out = w_g @ cols, so each factor's gradient is dout times the other, transposed.
    dw = (dout_g @ cols.transpose(0, 2, 1)).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    if not input_grad:
        return None, dw, db
    dcols = w_g.transpose(0, 2, 1) @ dout_g
    n, _, oh, ow = dout.shape
    dwindows = dcols.reshape(x_shape[1], kh, kw, n, oh, ow)
    dx = _scatter(dwindows, x_shape, stride, padding, dilation)
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Pooling (no ceil_mode, no dilation). Kernel offset (i, j) of every window at once is one
# strided view of the padded input, so a pooling layer is a loop over the kh * kw offsets that
# reduces those views; no window array is built.
# --------------------------------------------------------------------------------------------


def _pool_views(x, kernel, stride, padding, pad_value):
    """The padded input and, for each kernel offset in row-major order, the slices that view
    it across all windows; plus the output size."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    *_, (ph, pw), _, out_size = _geometry(x.shape, kernel, stride, padding, 1)
    padded = x
    if ph or pw:
        padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    offsets = [
        _offset_slices(i, j, stride, (1, 1), out_size)
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    return padded, offsets


def _unpad(padded, x_shape, padding):
    ph, pw = _pair(padding)
    return padded[:, :, ph : ph + x_shape[2], pw : pw + x_shape[3]]


def max_pool_forward(x, kernel, stride=None, padding=0):
    """Max over each window; stride defaults to the kernel. Padding is -inf, so it never wins."""
    padded, offsets = _pool_views(x, kernel, stride, padding, -np.inf)
    rows, cols = offsets[0]
    out = padded[:, :, rows, cols].copy()
    arg = np.zeros(out.shape, dtype=np.int16)  # which offset holds each window's maximum
    for k, (rows, cols) in enumerate(offsets[1:], start=1):
        candidate = padded[:, :, rows, cols]
        # Strictly greater, so the first of tied maxima wins, as in PyTorch. Offsets come in
        # increasing k, so a new winner always has the largest index yet: max() records it.
        np.maximum(arg, np.int16(k) * (candidate > out), out=arg)
        np.maximum(out, candidate, out=out)
    return out, (x.shape, padded.shape, offsets, arg, padding)


def max_pool_backward(dout, cache):
    """The whole gradient of a window goes to the entry that was its maximum."""
    x_shape, padded_shape, offsets, arg, padding = cache
    dpadded = np.zeros(padded_shape, dtype=dout.dtype)
    for k, (rows, cols) in enumerate(offsets):
        # Overlapping windows may share their maximum, so the gradients add up.
        dpadded[:, :, rows, cols] += dout * (arg == k)
    return _unpad(dpadded, x_shape, padding)


def avg_pool_forward(x, kernel, stride=None, padding=0):
    """Mean over each window, padding zeros counted in the divisor (count_include_pad=True)."""
    padded, offsets = _pool_views(x, kernel, stride, padding, 0.0)
    rows, cols = offsets[0]
    total = padded[:, :, rows, cols].copy()
    for rows, cols in offsets[1:]:
        total += padded[:, :, rows, cols]
    return total / len(offsets), (x.shape, padded.shape, offsets, padding)


def avg_pool_backward(dout, cache):
    """Each window entry receives an equal share 1 / (kh * kw) of the window's gradient."""
    x_shape, padded_shape, offsets, padding = cache
    share = dout / len(offsets)
    dpadded = np.zeros(padded_shape, dtype=dout.dtype)
    for rows, cols in offsets:
        dpadded[:, :, rows, cols] += share
    return _unpad(dpadded, x_shape, padding)


def global_avg_pool_forward(x):
    """(N, C, H, W) -> (N, C): the mean of each feature map, adaptive_avg_pool2d(1) flattened."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dout, cache):
    h, w = cache[2:]
    return np.broadcast_to(dout[:, :, None, None] / (h * w), cache).copy()
