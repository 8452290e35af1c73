"""An exponential moving average of the weights, evaluated in place of the last weights.

Averaging the weights along the end of an SGD trajectory (Polyak & Juditsky 1992) gives a
model that generalises better than the last iterate, at the cost of one lerp per step; the
CIFAR-10 speed-run scripts use it for the last epochs. The decay ramps up as
min(decay, (1 + t) / (10 + t)) so the first updates do not freeze the random initial weights
into the average. Buffers (BatchNorm statistics) are copied from the live model; the trainer
recomputes the average's BatchNorm statistics before evaluating it (see batchnorm.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
