"""Numerical gradients by centred finite differences, and the relative error that compares them
with analytic ones: the check every backward pass in cnnlab.scratch must pass.

For f: R^n -> R^m and an upstream gradient `dout`, the gradient of g(x) = sum(f(x) * dout) with
respect to x[i] is approximated by the centred difference D(h) = (g(x + h e_i) - g(x - h e_i)) / 2h,
whose error is c h^2 + O(h^4). Richardson extrapolation, (4 D(h/2) - D(h)) / 3, cancels the h^2
term, so a step as large as 1e-4 is accurate and rounding noise (about 1e-16 |g| / h) stays
small: in float64 a correct backward pass agrees to about 1e-10 where f is smooth.
"""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, dout: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """d sum(f() * dout) / dx, changing `x` in place one entry at a time (restored after).
    `f` takes no arguments and reads `x` itself, so it can close over several arrays.
    Centred differences are combined as in `directional_derivative`, (4 D(h/2) - D(h)) / 3."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        d_h, d_half = (_centred_entry(f, flat, i, dout, step) for step in (h, h / 2))
        flat_grad[i] = (4 * d_half - d_h) / 3
    return grad


def _centred_entry(f, flat: np.ndarray, i: int, dout: np.ndarray, step: float) -> float:
    """(g(x + step e_i) - g(x - step e_i)) / 2 step for g = sum(f() * dout). The outputs are
    subtracted before they are weighted and summed: outputs that entry i does not reach then
    cancel exactly instead of adding rounding noise to the difference."""
    saved = flat[i]
    flat[i] = saved + step
    plus = np.array(f(), dtype=np.float64)
    flat[i] = saved - step
    minus = np.array(f(), dtype=np.float64)
    flat[i] = saved
    return float(np.sum((plus - minus) * dout)) / (2 * step)


def relative_error(analytic: np.ndarray, numeric: np.ndarray, zero: float = 0.0) -> float:
    """max |a - n| / max(|a| + |n|, 1e-12): 0 when equal, about 1 when unrelated.

    Entries below `zero` in both are counted as equal. A gradient that is exactly 0 (the bias of
    a layer followed by BatchNorm, which subtracts it again) has no relative error to speak of:
    its finite difference is rounding noise, about 1e-10 for a loss near 1."""
    analytic = np.atleast_1d(np.asarray(analytic, np.float64))
    numeric = np.atleast_1d(np.asarray(numeric, np.float64))
    scale = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-12)
    error = np.abs(analytic - numeric) / scale
    error[(np.abs(analytic) < zero) & (np.abs(numeric) < zero)] = 0.0
    return float(np.max(error)) if analytic.size else 0.0


def directional_derivative(f, x: np.ndarray, v: np.ndarray, h: float = 1e-5) -> float:
    """d f() / dt at x + t v, t = 0, for a scalar f(), changing `x` in place (restored after).

    Two calls of f per step size instead of two per entry, so it scales to whole networks.
    Centred differences D(h) = f' + c h^2 + O(h^4); Richardson's (4 D(h/2) - D(h)) / 3 cancels
    the h^2 term, so h can be large enough to leave rounding noise far behind."""
    saved = x.copy()

    def centred(step):
        x[...] = saved + step * v
        plus = f()
        x[...] = saved - step * v
        minus = f()
        x[...] = saved
        return (plus - minus) / (2 * step)

    return (4 * centred(h / 2) - centred(h)) / 3
