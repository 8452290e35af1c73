"""Fully connected layer, elementwise activations, flatten and dropout in plain NumPy.

Each layer is a pair: `*_forward(x, ...) -> (out, cache)` computes the output and keeps what the
backward pass needs, and `*_backward(dout, cache)` turns the upstream gradient dL/dout into the
gradients of the inputs. They are the reference against which the PyTorch models are understood:
tests check every backward against finite differences and every forward against
torch.nn.functional. Everything works in the dtype it is given.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------
# Linear: out = x @ w.T + b, with w laid out (out_features, in_features) as in torch.nn.Linear.
# --------------------------------------------------------------------------------------------


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """x (N, D), w (M, D), b (M,) or None -> out (N, M)."""
    out = x @ w.T
    if b is not None:
        out = out + b
    return out, (x, w, b is not None)


def linear_backward(dout: np.ndarray, cache, input_grad: bool = True):
    """-> (dx (N, D), dw (M, D), db (M,) or None); dx is None with input_grad=False (for a
    first layer, whose input needs no gradient)."""
    x, w, has_bias = cache
    dx = dout @ w if input_grad else None
    dw = dout.T @ x
    # b is broadcast over the batch, so its gradient sums over the batch.
    db = dout.sum(axis=0) if has_bias else None
    return dx, dw, db


# --------------------------------------------------------------------------------------------
# Elementwise activations: dx = dout * f'(x), with f' written from whatever is cheapest to keep.
# --------------------------------------------------------------------------------------------


def relu_forward(x: np.ndarray):
    return np.maximum(x, 0), x


def relu_backward(dout: np.ndarray, cache):
    x = cache
    # At exactly 0 the derivative is taken as 0, as PyTorch does.
    return dout * (x > 0)


def leaky_relu_forward(x: np.ndarray, slope: float = 0.01):
    return np.where(x > 0, x, slope * x), (x, slope)


def leaky_relu_backward(dout: np.ndarray, cache):
    x, slope = cache
    return np.where(x > 0, dout, slope * dout)


def sigmoid_forward(x: np.ndarray):
    # 1 / (1 + exp(-x)) overflows for very negative x. The identity (1 + tanh(x / 2)) / 2 never
    # does, and one tanh is several times cheaper than the exp/log of a guarded formula. Below
    # about -17 (float32) or -37 (float64) it returns exactly 0, off by less than one unit of 1.
    out = 0.5 + 0.5 * np.tanh(0.5 * x)
    return out, out


def sigmoid_backward(dout: np.ndarray, cache):
    # The derivative s(1 - s) needs only the output, so the output is the cache.
    out = cache
    return dout * out * (1 - out)


def tanh_forward(x: np.ndarray):
    out = np.tanh(x)
    return out, out


def tanh_backward(dout: np.ndarray, cache):
    out = cache
    return dout * (1 - out * out)


# --------------------------------------------------------------------------------------------
# Flatten: the bridge from convolutional feature maps (N, C, H, W) to a linear layer (N, D).
# --------------------------------------------------------------------------------------------


def flatten_forward(x: np.ndarray):
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout: np.ndarray, cache):
    return dout.reshape(cache)


# --------------------------------------------------------------------------------------------
# Inverted dropout: scale the survivors at train time so that evaluation needs no change.
# --------------------------------------------------------------------------------------------


def dropout_forward(
    x: np.ndarray, p: float, train: bool = True, rng: np.random.Generator | None = None
):
    """Zero each entry with probability p in train mode and scale the rest by 1 / (1 - p), which
    keeps E[out] = x; in eval mode return x unchanged. The cache is the mask (None in eval)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not train or p == 0:
        return x, None
    rng = np.random.default_rng() if rng is None else rng
    keep = rng.random(x.shape) >= p
    # With p == 1 nothing survives; avoid 0 / 0 by not scaling at all.
    scale = 1 / (1 - p) if p < 1 else 0.0
    mask = keep.astype(x.dtype) * np.asarray(scale, dtype=x.dtype)
    return x * mask, mask


def dropout_backward(dout: np.ndarray, cache):
    # The forward pass is a fixed elementwise multiply, so the gradient is the same multiply.
    mask = cache
    return dout if mask is None else dout * mask
