"""Normalisation layers by hand: batch normalisation and local response normalisation.

Batch normalisation (Ioffe & Szegedy, 2015) standardises every feature (for (N, D) inputs) or
every channel (for (N, C, H, W) inputs, statistics over N, H and W) with the statistics of the
current mini-batch, then lets the network undo that with a learned scale `gamma` and shift
`beta`. At test time the batch is not a meaningful population, so running averages collected
during training are used instead, exactly as torch.nn.BatchNorm does.

Its backward pass is derived twice. `batchnorm_backward_graph` walks the computational graph one
node at a time (mean, centred input, variance, inverse standard deviation, normalised input,
scale and shift), which is how one finds the gradient. `batchnorm_backward` is the closed form
that falls out when those steps are simplified, which is how one should compute it. The tests
check that the two agree, with finite differences and with PyTorch.

Local response normalisation (Krizhevsky et al., 2012) divides each activation by a power of
the energy of its neighbouring channels, matching torch.nn.functional.local_response_norm.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# ----------------------------------------------------------------------------------------------
# Batch normalisation
# ----------------------------------------------------------------------------------------------


def _reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    """Axes the statistics are taken over: every axis except the feature/channel axis 1."""
    if x.ndim not in (2, 4):
        raise ValueError(f"batchnorm expects (N, D) or (N, C, H, W) input, got shape {x.shape}")
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _as_broadcast(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C) or (1, C, 1, 1), so per-channel vectors broadcast against x."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    train: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[np.ndarray, dict]:
    """Batch normalisation of x (N, D) or (N, C, H, W); gamma, beta and the running statistics
    have shape (D,) or (C,). In train mode running_mean and running_var are updated in place."""
    axes = _reduce_axes(x)
    m = x.size // x.shape[1]  # values per feature that one statistic summarises
    if train:
        if m < 2:
            # The unbiased variance is undefined; PyTorch refuses this case too.
            raise ValueError("batchnorm needs more than one value per channel when training")
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = np.mean(xc * xc, axis=axes, keepdims=True)  # biased: it normalises this batch
        # The running variance estimates the population, so it gets Bessel's correction.
        running_mean *= 1 - momentum
        running_mean += momentum * mean.reshape(-1)
        running_var *= 1 - momentum
        running_var += momentum * var.reshape(-1) * (m / (m - 1))
    else:
        xc = x - _as_broadcast(running_mean, x)
        var = _as_broadcast(running_var, x)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv_std
    out = _as_broadcast(gamma, x) * xhat + _as_broadcast(beta, x)
    cache = {
        "train": train,
        "axes": axes,
        "m": m,
        "gamma": gamma,
        "xc": xc,
        "inv_std": inv_std,
        "xhat": xhat,
    }
    return out, cache


def _affine_backward(dout: np.ndarray, cache: dict):
    """Backward through out = gamma * xhat + beta, shared by both versions below."""
    axes, xhat = cache["axes"], cache["xhat"]
    dbeta = dout.sum(axis=axes)
    dgamma = np.sum(dout * xhat, axis=axes)
    dxhat = dout * _as_broadcast(cache["gamma"], dout)
    return dxhat, dgamma, dbeta


def batchnorm_backward_graph(dout: np.ndarray, cache: dict):
    """(dx, dgamma, dbeta) by walking the graph of batchnorm_forward backwards, one node at a
    time. In eval mode the mean and variance are constants, so the walk stops at xhat."""
    axes, m = cache["axes"], cache["m"]
    xc, inv_std = cache["xc"], cache["inv_std"]

    # Nodes: out = gamma * xhat + beta (scale and shift).
    dxhat, dgamma, dbeta = _affine_backward(dout, cache)

    # Node: xhat = xc * inv_std. Both factors feed on x in train mode, so both get gradients;
    # inv_std was broadcast over the batch, so its gradient sums over it.
    dxc = dxhat * inv_std
    if not cache["train"]:
        return dxc, dgamma, dbeta  # xc = x - running_mean: dx = dxc
    dinv_std = np.sum(dxhat * xc, axis=axes, keepdims=True)

    # Node: inv_std = (var + eps)^(-1/2).
    dvar = -0.5 * inv_std**3 * dinv_std

    # Node: var = mean(xc^2). Every xc entry feeds the variance as well as xhat.
    dxc = dxc + (2.0 / m) * xc * dvar

    # Node: xc = x - mean. x flows straight through; the mean was broadcast, so it gathers.
    dx = dxc
    dmean = -np.sum(dxc, axis=axes, keepdims=True)

    # Node: mean = sum(x) / m, handing each x an equal share.
    dx = dx + dmean / m
    return dx, dgamma, dbeta


def batchnorm_backward(dout: np.ndarray, cache: dict):
    """(dx, dgamma, dbeta) in closed form. Simplifying the graph walk (xc's sum is zero, so the
    variance path leaves only the xhat term) gives
        dx = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat)).
    In eval mode the statistics are constants and dx = dxhat * inv_std."""
    axes, m = cache["axes"], cache["m"]
    xhat, inv_std = cache["xhat"], cache["inv_std"]
    dxhat, dgamma, dbeta = _affine_backward(dout, cache)
    if not cache["train"]:
        return dxhat * inv_std, dgamma, dbeta
    sum_dxhat = dxhat.sum(axis=axes, keepdims=True)
    sum_dxhat_xhat = np.sum(dxhat * xhat, axis=axes, keepdims=True)
    dx = (inv_std / m) * (m * dxhat - sum_dxhat - xhat * sum_dxhat_xhat)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------------------------
# Local response normalisation
# ----------------------------------------------------------------------------------------------


def _channel_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """For every channel c, the sum of a over channels c - before .. c + after along axis 1,
    treating channels outside the input as zero."""
    pad = [(0, 0)] * a.ndim
    pad[1] = (before, after)
    padded = np.pad(a, pad)
    window = before + after + 1
    return sliding_window_view(padded, window, axis=1).sum(axis=-1)


def lrn_forward(
    x: np.ndarray, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> tuple[np.ndarray, tuple]:
    """Local response normalisation across channels of x (N, C, ...):
        out = x / (k + alpha / size * sum_{window} x^2) ** beta,
    the window covering channels c - size//2 .. c + (size-1)//2, zero-padded at the edges.
    PyTorch averages over the window (dividing by size even at the edges), hence alpha/size."""
    if x.ndim < 3:
        raise ValueError(f"lrn expects (N, C, ...) input with at least 3 dims, got {x.shape}")
    scale = k + (alpha / size) * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    out = x * scale**-beta
    return out, (x, scale, size, alpha, beta)


def lrn_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """dx for lrn_forward. Input channel j enters its own output directly and the scale of every
    channel c whose window contains j, i.e. c in j - (size-1)//2 .. j + size//2 (the window
    mirrored), so that part of the gradient is a window sum with the padding swapped:
        dx_j = dout_j * s_j^-beta - 2 alpha beta / size * x_j * sum_c dout_c x_c s_c^(-beta-1)."""
    x, scale, size, alpha, beta = cache
    through_scale = dout * x * scale ** (-beta - 1)
    gathered = _channel_window_sum(through_scale, (size - 1) // 2, size // 2)
    return dout * scale**-beta - (2.0 * alpha * beta / size) * x * gathered
