"""Numerical gradients by centred finite differences, and the relative error that compares them
with analytic ones: the check every backward pass in cnnlab.scratch must pass.

For f: R^n -> R^m and an upstream gradient `dout`, the gradient of sum(f(x) * dout) with respect
to x[i] is approximated by (g(x + h e_i) - g(x - h e_i)) / 2h, whose error is O(h^2). In float64
with h = 1e-6 a correct backward pass agrees to about 1e-8 relative error where f is smooth.
"""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, dout: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d sum(f() * dout) / dx, changing `x` in place one entry at a time (restored after).
    `f` takes no arguments and reads `x` itself, so it can close over several arrays."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        plus = np.sum(f() * dout)
        flat[i] = saved - h
        minus = np.sum(f() * dout)
        flat[i] = saved
        flat_grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(|a| + |n|, 1e-12): 0 when equal, about 1 when unrelated."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-12)
    return float(np.max(np.abs(analytic - numeric) / scale)) if analytic.size else 0.0
