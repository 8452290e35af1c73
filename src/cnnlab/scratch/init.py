"""Weight initialisation schemes by hand, matching torch.nn.init's formulas.

The aim of both schemes is to keep activation (and gradient) variance roughly constant from layer
to layer, so a deep stack neither explodes nor dies at the start of training:

- Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward neural
  networks": for linear/tanh-like units, Var(w) = gain^2 * 2 / (fan_in + fan_out), the compromise
  between preserving forward variance (1/fan_in) and backward variance (1/fan_out).
- He et al. (2015), "Delving Deep into Rectifiers": a ReLU zeroes half its input, so to preserve
  the variance Var(w) = gain^2 / fan with gain^2 = 2 for ReLU (2 / (1 + a^2) for leaky ReLU of
  slope a), fan being fan_in (forward pass) or fan_out (backward pass).

A uniform U(-bound, bound) has variance bound^2 / 3, hence bound = sqrt(3) * std. Fans follow
torch: for a weight of shape (out, in, *kernel), fan_in = in * prod(kernel) and
fan_out = out * prod(kernel), so a linear (out, in) weight and a conv (out, in, kh, kw) weight
are handled alike.
"""

from __future__ import annotations

import math

import numpy as np


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as torch computes them."""
    if len(shape) < 2:
        raise ValueError("fan in and fan out need a weight with at least 2 dimensions")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, a: float = 0.0) -> float:
    """The gain torch.nn.init.calculate_gain recommends for a nonlinearity."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + a**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _xavier_std(shape: tuple[int, ...], gain: float) -> float:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def _kaiming_std(shape: tuple[int, ...], a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def xavier_uniform(shape: tuple[int, ...], rng: np.random.Generator, gain: float = 1.0):
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)): Var = gain^2 * 2 / (in + out)."""
    bound = math.sqrt(3.0) * _xavier_std(shape, gain)
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape: tuple[int, ...], rng: np.random.Generator, gain: float = 1.0):
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, _xavier_std(shape, gain), size=shape)


def kaiming_uniform(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
):
    """U(-b, b) with b = gain * sqrt(3 / fan): Var = gain^2 / fan (2 / fan for ReLU)."""
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return rng.uniform(-bound, bound, size=shape)


def kaiming_normal(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
):
    """N(0, std^2) with std = gain / sqrt(fan)."""
    return rng.normal(0.0, _kaiming_std(shape, a, mode, nonlinearity), size=shape)
