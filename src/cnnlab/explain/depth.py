"""Explain topics about signal propagation through depth: how gradients vanish or explode
through many layers (and what keeps them level: ReLU with Kaiming init, BatchNorm, residual
connections, gradient clipping), and how the weight initialisation decides whether activations
survive a deep stack."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.explain.figures import save_curves
from cnnlab.explain.optimisation import _rounded
from cnnlab.explain.topic import Context, Finding, format_number, topic
from cnnlab.scratch import init
from cnnlab.scratch.layers import linear_forward, relu_forward


def _set_weight(linear: nn.Linear, weight: np.ndarray) -> nn.Linear:
    """Load a NumPy initialisation (from cnnlab.scratch.init) into a torch layer; zero bias."""
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.zero_()
    return linear


# ---- 11. Vanishing and exploding gradients ---------------------------------------------------


class _Residual(nn.Module):
    """x + W sigmoid(x): the identity path carries the gradient past the sigmoid."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(torch.sigmoid(x))


def _deep_net(variant: str, depth: int, width: int, rng: np.random.Generator) -> nn.Sequential:
    """`depth` width x width linear layers in one of four variants, then a 10-way classifier."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        shape = (width, width)
        if variant == "relu_kaiming":
            layers += [_set_weight(nn.Linear(width, width), init.kaiming_normal(shape, rng))]
            layers.append(nn.ReLU())
            continue
        linear = _set_weight(nn.Linear(width, width), init.xavier_normal(shape, rng))
        if variant == "sigmoid":
            layers += [linear, nn.Sigmoid()]
        elif variant == "sigmoid_batchnorm":
            layers += [linear, nn.BatchNorm1d(width), nn.Sigmoid()]
        else:  # sigmoid_residual
            layers.append(_Residual(linear))
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _layer_gradient_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The norm of each hidden linear layer's weight gradient (the classifier left out)."""
    F.cross_entropy(model(x), y).backward()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    return [m.weight.grad.norm().item() for m in linears]


def _explosion(ctx: Context, clip: float | None, steps: int) -> dict:
    """Plain SGD with too large a learning rate on an 8-layer ReLU regression net; the same
    run with the gradient norm clipped to `clip` (torch.nn.utils.clip_grad_norm_)."""
    rng = ctx.rng(11)
    generator = ctx.manual_seed(11)
    layers: list[nn.Module] = []
    for fan_in in [16] + [64] * 7:
        layers += [_set_weight(nn.Linear(fan_in, 64), init.kaiming_normal((64, fan_in), rng))]
        layers.append(nn.ReLU())
    model = nn.Sequential(*layers, nn.Linear(64, 1))
    x = torch.randn(512, 16, generator=generator)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] ** 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, norms = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        # With an infinite bound the call only measures the norm.
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf).item())
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    finite = all(math.isfinite(v) for v in losses)
    return {
        "max_norm": clip,
        "steps_run": len(losses),
        "all_finite": finite,
        "first_loss": losses[0],
        "last_loss": losses[-1] if finite else str(losses[-1]),
        "largest_finite_loss": max((v for v in losses if math.isfinite(v)), default=0.0),
        "largest_gradient_norm": str(max(norms)) if math.isinf(max(norms)) else max(norms),
        "clipped_steps": sum(clip is not None and n > clip for n in norms),
    }


@topic(
    11,
    "vanishing-gradients",
    "Vanishing and exploding gradients",
    "Through a deep sigmoid stack the first layer's gradient is orders of magnitude smaller "
    "than the last's; ReLU with Kaiming init, BatchNorm and residual connections keep it "
    "level; clipping the gradient norm stops an explosion.",
    """Backpropagation multiplies one Jacobian per layer; a sigmoid's derivative is at most 1/4,
    so through many sigmoid layers the gradient shrinks geometrically (Hochreiter 1991; Glorot
    & Bengio 2010). The experiment builds deep stacks of 256-wide layers, at initialisation,
    and measures each layer's weight-gradient norm on one random batch: sigmoid with Xavier
    init; ReLU with Kaiming init (He et al. 2015); sigmoid with BatchNorm (Ioffe & Szegedy
    2015); sigmoid inside residual blocks x + W sigmoid(x) (He et al. 2016). The reverse
    failure, explosion, comes from too large a learning rate: an 8-layer ReLU net trained by SGD
    at lr 0.1 diverges; the same run with the gradient norm clipped to 1 (Pascanu et al. 2013)
    stays finite.""",
)
def vanishing_gradients(ctx: Context) -> Finding:
    depth, width = (20, 256) if ctx.quick else (30, 256)
    generator = ctx.manual_seed(12)
    x = torch.randn(256, width, generator=generator)
    y = torch.randint(0, 10, (256,), generator=generator)
    variants = ("sigmoid", "relu_kaiming", "sigmoid_batchnorm", "sigmoid_residual")
    norms = {
        v: _layer_gradient_norms(_deep_net(v, depth, width, ctx.rng(12)), x, y) for v in variants
    }
    ratios = {v: n[0] / n[-1] for v, n in norms.items()}
    steps = 50 if ctx.quick else 300
    plain, clipped = _explosion(ctx, None, steps), _explosion(ctx, 1.0, steps)
    figures = save_curves(
        ctx.figure_path("gradients"),
        {v: (list(range(1, depth + 1)), n) for v, n in norms.items()},
        f"Weight-gradient norm per layer at initialisation ({depth} layers)",
        "layer (1 = nearest the input)",
        "||dL/dW||",
        log_y=True,
    )
    vanishes = ratios["sigmoid"] < 1e-3
    level = all(0.1 <= ratios[v] <= 10 for v in variants[1:])
    explodes = not plain["all_finite"] or plain["largest_finite_loss"] > 1e6 * plain["first_loss"]
    tamed = clipped["all_finite"] and clipped["last_loss"] < clipped["first_loss"]
    remedies = ", ".join(f"{v} {ratios[v]:.2f}" for v in variants[1:])
    verdict = (
        f"First/last layer gradient-norm ratio over {depth} layers: sigmoid {ratios['sigmoid']:.1e}"
        f"; {remedies}. Without clipping, SGD at lr 0.1 "
        + (
            f"reached a non-finite loss at step {plain['steps_run']}"
            if not plain["all_finite"]
            else f"peaked at loss {plain['largest_finite_loss']:.3g}"
        )
        + f"; clipped to norm 1 ({clipped['clipped_steps']} of {clipped['steps_run']} steps "
        f"clipped) the loss went from {clipped['first_loss']:.3g} to "
        f"{format_number(clipped['last_loss'])}."
    )
    return Finding(
        numbers={
            "depth": depth,
            "width": width,
            "first_over_last_gradient_ratio": ratios,
            "gradient_norm_per_layer": {v: _rounded(n, 3) for v, n in norms.items()},
            "explosion_without_clipping": plain,
            "explosion_with_clipping": clipped,
        },
        holds=vanishes and level and explodes and tamed,
        verdict=verdict,
        figures=figures,
    )


# ---- 17. Initialisation ----------------------------------------------------------------------


def _initial_weights(scheme: str, shape: tuple[int, int], rng: np.random.Generator):
    if scheme == "zero":
        return np.zeros(shape)
    if scheme == "normal_0.01":
        return rng.normal(0.0, 0.01, size=shape)
    if scheme == "normal_1":
        return rng.normal(0.0, 1.0, size=shape)
    if scheme == "xavier":
        return init.xavier_normal(shape, rng)
    return init.kaiming_normal(shape, rng)


def _forward_stds(scheme: str, x: np.ndarray, depth: int, rng: np.random.Generator):
    """The std of every layer's ReLU output through `depth` linear+ReLU layers (NumPy engine),
    and the largest spread between units of the last layer (0: every unit computes the same)."""
    stds, h = [], x
    for _ in range(depth):
        weight = _initial_weights(scheme, (x.shape[1], x.shape[1]), rng)
        h, _ = relu_forward(linear_forward(h, weight, np.zeros(x.shape[1]))[0])
        stds.append(float(h.std()))
    return stds, float(np.max(h.max(axis=1) - h.min(axis=1))), float(np.abs(h).max())


@topic(
    17,
    "initialisation",
    "Weight initialisation",
    "In a deep ReLU network zero init makes every unit the same, too small or too large an init "
    "makes activations vanish or explode, Xavier shrinks them by 1/sqrt(2) per layer and "
    "Kaiming keeps them level.",
    """Each linear layer multiplies the activation variance by fan_in * Var(w), and a ReLU
    halves the second moment. So a deep stack keeps its scale only if Var(w) = 2 / fan_in: He et
    al. (2015), "Delving Deep into Rectifiers" (Kaiming init). Glorot & Bengio's (2010) Xavier
    init, Var(w) = 2 / (fan_in + fan_out), was derived for units without the halving, so on
    ReLU layers it loses a factor sqrt(2) per layer; a fixed std of 0.01 or 1 ignores the fan
    altogether. With all weights zero every unit computes the same thing (and here nothing):
    gradient descent can never break that symmetry. The experiment pushes a random batch
    through 20 ReLU layers of width 256, initialised with cnnlab.scratch.init in NumPy, and
    records the std of each layer's activations.""",
)
def initialisation(ctx: Context) -> Finding:
    depth, width = 20, 256
    x = ctx.rng(17).standard_normal((256 if ctx.quick else 2048, width))
    schemes = ("zero", "normal_0.01", "normal_1", "xavier", "kaiming")
    stds, spread, largest = {}, {}, {}
    for offset, scheme in enumerate(schemes):
        stds[scheme], spread[scheme], largest[scheme] = _forward_stds(
            scheme, x, depth, ctx.rng(170 + offset)
        )
    ratio = {s: stds[s][-1] / stds[s][0] for s in schemes[1:]}
    factor = {s: ratio[s] ** (1 / (depth - 1)) for s in schemes[1:]}
    figures = save_curves(
        ctx.figure_path("activations"),
        {s: (list(range(1, depth + 1)), stds[s]) for s in schemes[1:]},
        "Activation std per ReLU layer (zero init: exactly 0, not drawn)",
        "layer",
        "std of the activations",
        log_y=True,
    )
    symmetric = spread["zero"] == 0.0 and largest["zero"] == 0.0
    vanish, explode = ratio["normal_0.01"] < 1e-6, ratio["normal_1"] > 1e6
    xavier_halves = abs(factor["xavier"] - 1 / math.sqrt(2)) < 0.05
    kaiming_level = 0.5 <= ratio["kaiming"] <= 2.0
    verdict = (
        f"Zero init: every unit of layer {depth} outputs the same value ({largest['zero']:g}; "
        f"spread between units {spread['zero']:g}). Last/first activation std over {depth} "
        f"layers: std 0.01 {ratio['normal_0.01']:.1e}, std 1 {ratio['normal_1']:.1e}, Xavier "
        f"{ratio['xavier']:.1e} ({factor['xavier']:.3f} per layer; 1/sqrt(2) = 0.707), Kaiming "
        f"{ratio['kaiming']:.2f} ({factor['kaiming']:.3f} per layer)."
    )
    return Finding(
        numbers={
            "depth": depth,
            "width": width,
            "batch": len(x),
            "last_over_first_std": ratio,
            "factor_per_layer": factor,
            "zero_init_unit_spread": spread["zero"],
            "zero_init_output_abs_max": largest["zero"],
            "std_per_layer": {s: _rounded(v, 3) for s, v in stds.items()},
        },
        holds=symmetric and vanish and explode and xavier_halves and kaiming_level,
        verdict=verdict,
        figures=figures,
    )
