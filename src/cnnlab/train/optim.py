"""Optimisers, the L1 penalty and learning-rate schedules for training.

Optimisers (`build_optimizer`):
- `sgd`: plain stochastic gradient descent, `w <- w - lr * g`.
- `momentum`: SGD with heavy-ball momentum (Polyak 1964, "Some methods of speeding up the
  convergence of iteration methods"), in torch's form `v <- m * v + g; w <- w - lr * v`.
- `nesterov`: Nesterov's accelerated gradient as written for deep learning by Sutskever, Martens,
  Dahl & Hinton 2013, "On the importance of initialization and momentum in deep learning".
- `adam`: Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization".
- `adamw`: Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization".

Weight decay means two different things here. For sgd/momentum/nesterov/adam it is the classic
L2 penalty `wd/2 * |w|^2` folded into the gradient (`g <- g + wd * w`), so Adam divides the decay
by its adaptive denominator like any other gradient: weights with large gradient history are
barely decayed. For adamw it is decoupled from the gradient: every step also does
`w <- w - lr * wd * w`, whatever the gradients were. For plain SGD the two coincide.

`l1_penalty` is the L1 term `strength * sum |w|` over conv and linear weights, added to the loss.

Schedules (`build_schedule`, `schedule_multipliers`) give a multiplier of the base learning rate
at every optimizer step s = 0 .. T-1, T = epochs * steps_per_epoch, W = warmup steps:
- warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): `(s + 1) / (W + 1)` for s < W, a
  linear ramp that never wastes a step at lr 0 and reaches 1 at step W, multiplied onto constant,
  step and cosine. W = round(warmup_epochs * steps_per_epoch), at least 1 if warmup_epochs > 0.
- `constant`: 1.
- `step`: times `step_gamma` from each milestone step `round(fraction * T)` on.
- `cosine`: `(1 + cos(pi * (s - W) / (T - W))) / 2` after the warmup: 1 at the end of the warmup,
  heading to 0 at s = T (Loshchilov & Hutter 2017, "SGDR", without restarts).
- `onecycle` (Smith & Topin 2018, "Super-Convergence"; the base lr is the peak): a linear rise
  from 1/25 at step 0 to 1 at step R, R = W if there is a warmup else round(0.3 * T), then a
  cosine from 1 at step R down to 1e-4 at s = T. No separate warmup ramp is applied on top.
Past T (the scheduler is stepped once more after the last optimizer step) the multiplier stays at
its value for s = T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from cnnlab.errors import CnnlabError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")

# The layers whose weights the L1 penalty acts on: biases and normalisation scales are left
# alone, as with the usual L1/L2 regularisers of the classic texts.
_PENALISED_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_ONECYCLE_START = 1 / 25  # torch's OneCycleLR div_factor
_ONECYCLE_END = 1e-4  # of the peak, at the last step
_ONECYCLE_RISE = 0.3  # share of the steps spent rising when there is no warmup


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer `name` (one of OPTIMIZERS) over the trainable parameters of `model`.

    `momentum` is used by `momentum` and `nesterov` only. `weight_decay` is an L2 penalty folded
    into the gradient for sgd, momentum, nesterov and adam, and decoupled weight decay for adamw
    (see the module docstring). Parameters with `requires_grad=False` (a frozen feature
    extractor) are left out.
    """
    _check_choice("optimizer", name, OPTIMIZERS)
    _check_number("learning rate (lr)", lr, minimum=0.0, inclusive=False)
    _check_number("weight decay", weight_decay, minimum=0.0)
    if name in ("momentum", "nesterov") and not (0.0 < momentum < 1.0):
        raise CnnlabError(f"momentum for the {name} optimizer must be in (0, 1), got {momentum}")
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise CnnlabError("nothing to optimise: every parameter of the model is frozen")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=name == "nesterov",
            weight_decay=weight_decay,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """`strength * sum |w|` over the trainable weights of the conv and linear layers.

    Biases and normalisation layers are not penalised, nor are frozen weights (their term would
    be a constant that only inflates the reported loss). With `strength == 0` this is a zero
    scalar on the model's device and no parameter is read.
    """
    _check_number("L1 strength", strength, minimum=0.0)
    if strength == 0:
        first = next(model.parameters(), None)
        return torch.zeros((), device=first.device if first is not None else "cpu")
    weights = [
        module.weight
        for module in model.modules()
        if isinstance(module, _PENALISED_LAYERS) and module.weight.requires_grad
    ]
    if not weights:
        raise CnnlabError("L1 penalty: the model has no trainable conv or linear weights")
    return strength * torch.stack([weight.abs().sum() for weight in weights]).sum()


def build_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_milestones: tuple[float, ...] = (0.5, 0.75),
    step_gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler to step once per optimizer step, multiplying the base lr as the module
    docstring says. Its state_dict is plain JSON data (the multiplier is a closure, which
    LambdaLR does not store), so rebuild it with the same arguments before loading a state."""
    multiplier = _multiplier_fn(
        name, epochs, steps_per_epoch, warmup_epochs, step_milestones, step_gamma
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def schedule_multipliers(
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_milestones: tuple[float, ...] = (0.5, 0.75),
    step_gamma: float = 0.1,
) -> list[float]:
    """The multiplier of the base lr at every optimizer step, as `build_schedule` applies it."""
    multiplier = _multiplier_fn(
        name, epochs, steps_per_epoch, warmup_epochs, step_milestones, step_gamma
    )
    return [multiplier(step) for step in range(epochs * steps_per_epoch)]


def _multiplier_fn(
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    step_milestones: tuple[float, ...],
    step_gamma: float,
) -> Callable[[int], float]:
    """Check the options and return step -> multiplier, the one definition of every schedule."""
    _check_choice("schedule", name, SCHEDULES)
    _check_count("epochs", epochs)
    _check_count("steps per epoch", steps_per_epoch)
    total = epochs * steps_per_epoch
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, epochs, total)
    if name == "onecycle":
        # Without a warmup the rise takes 30% of the steps, leaving at least one to anneal.
        rise = warmup or min(max(1, round(_ONECYCLE_RISE * total)), total - 1)
        return _onecycle(total, rise)
    if name == "step":
        shape = _step(total, step_milestones, step_gamma)
    elif name == "cosine":
        shape = _cosine(total, warmup)
    else:
        shape = _constant

    def multiplier(step: int) -> float:
        step = min(step, total)
        ramp = (step + 1) / (warmup + 1) if step < warmup else 1.0
        return ramp * shape(step)

    return multiplier


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int, epochs: int, total: int) -> int:
    _check_number("warmup epochs", warmup_epochs, minimum=0.0)
    if warmup_epochs == 0:
        return 0
    # A fraction of an epoch that rounds to no step still asks for a warmup: give it one step.
    warmup = max(1, round(warmup_epochs * steps_per_epoch))
    if warmup >= total:
        raise CnnlabError(
            f"warmup epochs must be fewer than the {epochs} training epoch(s), got {warmup_epochs}"
        )
    return warmup


def _constant(step: int) -> float:
    return 1.0


def _step(total: int, milestones: tuple[float, ...], gamma: float) -> Callable[[int], float]:
    for fraction in milestones:
        if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
            raise CnnlabError(
                f"step schedule milestones must be fractions of the run in (0, 1), "
                f"got {tuple(milestones)}"
            )
    if not (isinstance(gamma, (int, float)) and 0.0 < gamma <= 1.0):
        raise CnnlabError(f"step schedule gamma must be in (0, 1], got {gamma}")
    boundaries = [round(fraction * total) for fraction in milestones]

    def shape(step: int) -> float:
        return gamma ** sum(step >= boundary for boundary in boundaries)

    return shape


def _cosine(total: int, warmup: int) -> Callable[[int], float]:
    def shape(step: int) -> float:
        if step < warmup:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return shape


def _onecycle(total: int, rise: int) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        step = min(step, total)
        if step < rise:
            return _ONECYCLE_START + (1.0 - _ONECYCLE_START) * step / rise
        progress = (step - rise) / (total - rise)
        return _ONECYCLE_END + (1.0 - _ONECYCLE_END) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def _check_choice(what: str, name: str, choices: tuple[str, ...]) -> None:
    if name not in choices:
        raise CnnlabError(f"unknown {what} {name!r}: expected one of {', '.join(choices)}")


def _check_number(what: str, value: float, minimum: float, inclusive: bool = True) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    in_range = (
        number and math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    )
    if not in_range:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise CnnlabError(f"{what} must be a finite number {bound}, got {value!r}")


def _check_count(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CnnlabError(f"{what} must be a whole number >= 1, got {value!r}")
