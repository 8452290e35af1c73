"""First-order optimisers and gradient-norm clipping by hand, matching torch.optim step for step.

Each optimiser holds a list of parameter arrays and updates them IN PLACE when `.step(grads)` is
called with a matching list of gradient arrays, the way a training loop over layers.py caches
would use them. The formulas follow PyTorch's implementations exactly (not the papers' variants
where they differ), so a run here and a run with torch.optim produce the same parameters:

    SGD    (Sutskever et al. 2013 momentum, torch form)  g += wd*p;  b = mu*b + g  (b = g at first);
           step along g + mu*b with Nesterov, along b otherwise;  p -= lr * step
    Adam   (Kingma & Ba 2015)   g += wd*p (L2 folded into the gradient);  m, v moving averages of g
           and g^2;  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    AdamW  (Loshchilov & Hutter 2019)  p *= 1 - lr*wd (decay decoupled from the adaptive scaling),
           then the Adam step without L2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
    if len(params) != len(grads):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    for p, g in zip(params, grads, strict=True):
        if p.shape != g.shape:
            raise ValueError(f"gradient shape {g.shape} does not match parameter {p.shape}")


class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    def __init__(
        self,
        params: Sequence[np.ndarray],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires momentum > 0")
        self.params = list(params)
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay
        # None until the first step: torch seeds the buffer with the first gradient itself,
        # not with zeros, so the first momentum step equals a plain SGD step.
        self.buffers: list[np.ndarray | None] = [None] * len(self.params)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        _check(self.params, grads)
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            d = g + self.weight_decay * p if self.weight_decay else np.array(g, dtype=p.dtype)
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d.copy()
                else:
                    buf *= self.momentum
                    buf += d
                # Nesterov looks ahead: the step uses the gradient plus the *updated* velocity.
                d = d + self.momentum * buf if self.nesterov else buf
            p -= self.lr * d


class Adam:
    """Adam with bias-corrected moment estimates; weight_decay is classic L2 added to g."""

    decoupled = False

    def __init__(
        self,
        params: Sequence[np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        _check(self.params, grads)
        self.t += 1
        b1, b2 = self.betas
        # The moments start at zero, so early averages are biased towards zero by factors
        # (1 - b^t); dividing them out makes the first steps the intended size.
        bias1, bias2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            if self.weight_decay:
                if self.decoupled:
                    p *= 1 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(bias2) + self.eps
            p -= (self.lr / bias1) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay: parameters shrink by lr*wd before the Adam step, so the
    decay is not rescaled by the adaptive per-parameter step size as L2 would be."""

    decoupled = True

    def __init__(
        self,
        params: Sequence[np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def clip_grad_norm(grads: Sequence[np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most max_norm, like
    torch.nn.utils.clip_grad_norm_. Returns the total norm before clipping. The 1e-6 keeps the
    division safe and leaves the clipped norm just under max_norm."""
    total = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads)))
    factor = max_norm / (total + 1e-6)
    if factor < 1:
        for g in grads:
            g *= factor
    return total
