"""The gradient check of every component of cnnlab.scratch, behind `cnnlab gradcheck`.

Each check builds a small random float64 input, runs the component's forward and hand-written
backward pass, and compares every analytic gradient (inputs and parameters) with centred finite
differences, entry by entry. A component passes when its largest relative error is at most 1e-6.
Where a function has kinks (ReLU at 0, max pooling at ties, |x| at 0, the hinge at its margin)
the inputs are drawn away from them, since no derivative exists there to check.

The three scratch LeNets are checked whole, through `Sequential` and the loss. With 61 706
parameters they are too many to perturb one at a time, so each parameter tensor (and the input)
is checked along a random direction v: the derivative of the loss along v, by finite
differences, must equal <gradient, v>.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnlab.scratch import batchnorm as B
from cnnlab.scratch import conv as C
from cnnlab.scratch import layers as L
from cnnlab.scratch import losses
from cnnlab.scratch import network as N
from cnnlab.scratch.gradcheck import directional_derivative, numerical_gradient, relative_error
from cnnlab.scratch.logistic import logistic_loss_and_grad

TOLERANCE = 1e-6


@dataclass(frozen=True)
class CheckResult:
    component: str
    gradients: tuple[str, ...]  # what was checked, e.g. ("x", "weight", "bias")
    max_error: float
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


# A check takes a random generator and returns {gradient name: relative error}.
CHECKS: dict[str, Callable[[np.random.Generator], dict[str, float]]] = {}


def _check(name: str):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


def run_checks(names: list[str] | None = None, seed: int = 0) -> list[CheckResult]:
    """Run the named checks (all by default) in catalogue order. Unknown names: ValueError."""
    unknown = sorted(set(names or []) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    results = []
    for name in CHECKS if not names else [n for n in CHECKS if n in names]:
        errors = CHECKS[name](np.random.default_rng(seed))
        results.append(CheckResult(name, tuple(errors), max(errors.values())))
    return results


def _compare(forward, arrays: dict[str, np.ndarray], analytic: dict[str, np.ndarray], dout):
    """{name: relative error of analytic[name] against finite differences of forward() in
    arrays[name]}. `forward` reads the arrays, which numerical_gradient perturbs in place."""
    return {
        name: relative_error(analytic[name], numerical_gradient(forward, array, dout))
        for name, array in arrays.items()
    }


def _layer(forward, backward, arrays: dict[str, np.ndarray], rng, **options):
    """Check a functional layer whose backward returns gradients in the order of `arrays`."""
    out, cache = forward(*arrays.values(), **options)
    dout = rng.normal(size=out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    analytic = dict(zip(arrays, grads, strict=True))
    return _compare(lambda: forward(*arrays.values(), **options)[0], arrays, analytic, dout)


def _away_from_zero(rng, shape, gap=0.1):
    """Random values with |v| >= gap: no kink of ReLU or |v| within the finite-difference step."""
    return rng.choice([-1.0, 1.0], size=shape) * (gap + np.abs(rng.normal(size=shape)))


def _distinct(rng, shape):
    """A shuffled grid of distinct values: no ties in any max-pooling window."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape) / size


# ---- layers ------------------------------------------------------------------------------------


@_check("linear")
def _linear(rng):
    x, w, b = rng.normal(size=(4, 5)), rng.normal(size=(3, 5)), rng.normal(size=3)
    return _layer(L.linear_forward, L.linear_backward, {"x": x, "weight": w, "bias": b}, rng)


def _activation(forward, backward, x, rng):
    return _layer(forward, backward, {"x": x}, rng)


@_check("relu")
def _relu(rng):
    return _activation(L.relu_forward, L.relu_backward, _away_from_zero(rng, (3, 4, 5)), rng)


@_check("leaky_relu")
def _leaky_relu(rng):
    x = _away_from_zero(rng, (3, 4, 5))
    return _activation(L.leaky_relu_forward, L.leaky_relu_backward, x, rng)


@_check("sigmoid")
def _sigmoid(rng):
    return _activation(L.sigmoid_forward, L.sigmoid_backward, rng.normal(size=(3, 4, 5)), rng)


@_check("tanh")
def _tanh(rng):
    return _activation(L.tanh_forward, L.tanh_backward, rng.normal(size=(3, 4, 5)), rng)


@_check("flatten")
def _flatten(rng):
    return _activation(L.flatten_forward, L.flatten_backward, rng.normal(size=(2, 3, 4, 5)), rng)


@_check("dropout")
def _dropout(rng):
    # The same seed on every call fixes the mask, so the layer is a fixed multiply to check.
    def forward(x):
        return L.dropout_forward(x, 0.3, True, np.random.default_rng(7))

    return _activation(forward, L.dropout_backward, rng.normal(size=(4, 6)), rng)


def _conv(rng, c_in, c_out, groups, **options):
    x = rng.normal(size=(2, c_in, 7, 6))
    w, b = rng.normal(size=(c_out, c_in // groups, 3, 3)), rng.normal(size=c_out)
    arrays = {"x": x, "weight": w, "bias": b}
    return _layer(C.conv_forward, C.conv_backward, arrays, rng, groups=groups, **options)


@_check("conv")
def _conv_plain(rng):
    return _conv(rng, 3, 4, 1, stride=2, padding=1)


@_check("conv_dilated")
def _conv_dilated(rng):
    return _conv(rng, 2, 3, 1, padding=2, dilation=2)


@_check("conv_grouped")
def _conv_grouped(rng):
    return _conv(rng, 4, 6, 2, padding=1)


@_check("conv_depthwise")
def _conv_depthwise(rng):
    return _conv(rng, 4, 8, 4, stride=(2, 1), padding=1)


@_check("max_pool")
def _max_pool(rng):
    # Overlapping, padded windows: the gradients of shared maxima must add up.
    x = _distinct(rng, (2, 3, 7, 6))
    return _layer(
        C.max_pool_forward, C.max_pool_backward, {"x": x}, rng, kernel=3, stride=2, padding=1
    )


@_check("avg_pool")
def _avg_pool(rng):
    x = rng.normal(size=(2, 3, 7, 6))
    return _layer(
        C.avg_pool_forward, C.avg_pool_backward, {"x": x}, rng, kernel=3, stride=2, padding=1
    )


@_check("global_avg_pool")
def _global_avg_pool(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    return _layer(C.global_avg_pool_forward, C.global_avg_pool_backward, {"x": x}, rng)


def _batchnorm(rng, shape, train, backward=B.batchnorm_backward):
    channels = shape[1]
    x = rng.normal(size=shape) * 2 + 1
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    running = rng.normal(size=channels), 0.5 + rng.random(channels)

    def forward(x, gamma, beta):
        # Copies: a train-mode forward updates the running statistics in place.
        return B.batchnorm_forward(x, gamma, beta, running[0].copy(), running[1].copy(), train)

    return _layer(forward, backward, {"x": x, "gamma": gamma, "beta": beta}, rng)


@_check("batchnorm_fc")
def _batchnorm_fc(rng):
    return _batchnorm(rng, (6, 4), train=True)


@_check("batchnorm_conv")
def _batchnorm_conv(rng):
    return _batchnorm(rng, (3, 4, 3, 2), train=True)


@_check("batchnorm_graph")
def _batchnorm_graph(rng):
    return _batchnorm(rng, (3, 4, 3, 2), train=True, backward=B.batchnorm_backward_graph)


@_check("batchnorm_eval")
def _batchnorm_eval(rng):
    return _batchnorm(rng, (3, 4, 3, 2), train=False)


@_check("lrn")
def _lrn(rng):
    # A large alpha makes the normalisation matter; the default would hide a wrong gradient.
    return _layer(
        B.lrn_forward,
        B.lrn_backward,
        {"x": rng.normal(size=(2, 7, 3, 3))},
        rng,
        size=5,
        alpha=0.5,
        beta=0.75,
        k=2.0,
    )


# ---- losses and penalties: (loss, dloss/dprediction) -------------------------------------------


def _loss(loss_fn, pred, *args):
    _, grad = loss_fn(pred, *args)
    return _compare(lambda: loss_fn(pred, *args)[0], {"pred": pred}, {"pred": grad}, 1.0)


@_check("softmax_cross_entropy")
def _softmax_ce(rng):
    return _loss(losses.softmax_cross_entropy, rng.normal(size=(5, 4)), rng.integers(0, 4, 5))


@_check("binary_cross_entropy")
def _bce(rng):
    targets = rng.integers(0, 2, (5, 4)).astype(float)
    return _loss(losses.binary_cross_entropy_with_logits, rng.normal(size=(5, 4)), targets)


@_check("multiclass_hinge")
def _hinge(rng):
    # Scores k/10 + column/7: a margin 1 + (k - k')/10 + (j - y)/7 is never within 1/70 of the
    # hinge's kink at 0.
    scores = rng.integers(-20, 20, (5, 4)) / 10 + np.arange(4) / 7
    return _loss(losses.multiclass_hinge, scores, rng.integers(0, 4, 5))


@_check("mse")
def _mse(rng):
    return _loss(losses.mse, rng.normal(size=(4, 3)), rng.normal(size=(4, 3)))


@_check("l1")
def _l1(rng):
    target = rng.normal(size=(4, 3))
    return _loss(losses.l1, target + _away_from_zero(rng, (4, 3)), target)


@_check("smooth_l1")
def _smooth_l1(rng):
    # Differences on both pieces, kept 0.1 away from the joints at +-beta.
    target, beta = rng.normal(size=(4, 3)), 1.0
    size = rng.choice([0.1, 0.6, 1.1, 2.0], size=(4, 3)) * rng.choice([-1, 1], size=(4, 3))
    return _loss(lambda p, t: losses.smooth_l1(p, t, beta), target + size, target)


@_check("l1_penalty")
def _l1_penalty(rng):
    return _loss(losses.l1_penalty, _away_from_zero(rng, (3, 4)), 0.3)


@_check("l2_penalty")
def _l2_penalty(rng):
    return _loss(losses.l2_penalty, rng.normal(size=(3, 4)), 0.3)


@_check("logistic_regression")
def _logistic(rng):
    x, y = rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
    w, b = rng.normal(size=3), np.array([0.2])
    _, dw, db = logistic_loss_and_grad(w, b[0], x, y, l2=0.1)

    def loss():
        return logistic_loss_and_grad(w, b[0], x, y, l2=0.1)[0]

    return _compare(loss, {"w": w, "b": b}, {"w": dw, "b": np.array([db])}, 1.0)


# ---- whole networks through Sequential ---------------------------------------------------------


def _network_loss(model: N.Sequential, x, labels):
    """The loss of `model` on (x, labels) as a function, and its analytic gradients."""

    def loss():
        return losses.softmax_cross_entropy(model.forward(x), labels)[0]

    _, dlogits = losses.softmax_cross_entropy(model.forward(x), labels)
    dx = model.backward(dlogits)
    names = ["x", *model.state_names()]
    return loss, dict(zip(names, [dx, *model.gradients()], strict=True))


def _piece(model: N.Sequential) -> list[np.ndarray]:
    """Which smooth piece of a ReLU / max-pooling network the last forward pass ran on: the sign
    of every ReLU input (its cache) and the winning offset of every pooling window."""
    return [
        layer.cache > 0 if isinstance(layer, N.ReLU) else layer.cache[3]
        for layer in model.layers
        if isinstance(layer, (N.ReLU, N.MaxPool2d))
    ]


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _directional(model, loss, array, analytic, rng, tries: int = 10) -> float:
    """Relative error of <analytic, v> against the finite-difference derivative of the loss
    along a unit direction v, half random and half along the analytic gradient (so that the
    derivative stands well above rounding noise even where the gradient is tiny). A direction
    whose steps cross a kink (a ReLU input changing sign, a pooling window changing winner) has
    no derivative to compare, so it is redrawn."""
    loss()
    base = _piece(model)
    pieces = []

    def loss_on_piece():
        value = loss()
        pieces.append(_piece(model))
        return value

    for _ in range(tries):
        v = _unit(_unit(analytic) + _unit(rng.normal(size=array.shape)))
        pieces.clear()
        numeric = directional_derivative(loss_on_piece, array, v)
        if all(np.array_equal(a, b) for p in pieces for a, b in zip(p, base, strict=True)):
            # Gradients that are 0 exactly (a bias before BatchNorm) leave only noise.
            return relative_error(np.sum(analytic * v), numeric, zero=1e-8)
    raise RuntimeError(f"every one of {tries} random directions crossed a ReLU or pooling kink")


def _lenet(model: N.Sequential, rng):
    # A ReLU input within 1e-4 of 0 would sit on a kink for every direction: draw again.
    for _ in range(20):
        x, labels = rng.normal(size=(4, 1, 28, 28)), rng.integers(0, 10, 4)
        loss, analytic = _network_loss(model, x, labels)
        relu_inputs = [layer.cache for layer in model.layers if isinstance(layer, N.ReLU)]
        if all(np.abs(z).min() > 1e-4 for z in relu_inputs):
            break
    arrays = {"x": x, **dict(zip(model.state_names(), model.parameters(), strict=True))}
    return {
        name: _directional(model, loss, array, analytic[name], rng)
        for name, array in arrays.items()
    }


@_check("lenet")
def _lenet_original(rng):
    """The sigmoid / average-pooling LeNet; one random direction per parameter and the input."""
    return _lenet(N.scratch_lenet(rng=rng), rng)


@_check("lenet_bn")
def _lenet_bn(rng):
    """The same with BatchNorm after every conv and hidden linear layer."""
    return _lenet(N.scratch_lenet(batch_norm=True, rng=rng), rng)


@_check("lenet_modern")
def _lenet_modern(rng):
    """The BatchNorm / ReLU / max-pooling LeNet: kinks everywhere, so directions are checked
    for staying on one smooth piece."""
    return _lenet(N.scratch_lenet_modern(rng=rng), rng)
