"""Precise BatchNorm statistics: recompute the running mean and variance before evaluating.

In training, BatchNorm keeps an exponential moving average of batch statistics (momentum 0.1:
mostly the last ~20 batches). When the weights move fast (d2l trains LeNet-BN at lr 1.0) the
average lags behind the network it describes, and eval mode is then worse than the trained
weights: on Fashion-MNIST, LeNet-BN scored 0.829 test accuracy with the moving averages and
0.880 with recomputed statistics, for the same weights (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021, section 3: "precise BN"). So before each evaluation the trainer recomputes
them: a true average over a fixed number of training batches, with the weights frozen.
"""

from __future__ import annotations

import torch
from torch import nn


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers of a frozen feature extractor (all their parameters frozen): they stay in
    eval mode while the head trains, so their statistics stay those of the trained extractor."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and any(True for _ in m.parameters())
        and not any(p.requires_grad for p in m.parameters())
    ]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches) -> int:
    """Replace the running statistics of every BatchNorm layer (but frozen ones) by their
    average over `batches` (an iterable of (images, labels)); dropout stays off. Layers the
    forward pass does not reach (GoogLeNet's auxiliary heads in eval mode) keep theirs.
    Returns how many layers changed."""
    frozen = set(frozen_norms(model))
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m not in frozen
    ]
    if not norms:
        return 0
    saved = {m: (m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches, not a moving one
        m.train()
    try:
        for images, _ in batches:
            model(images)
    finally:
        for m, (momentum, state) in saved.items():
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # never reached: keep what it had
                m.load_state_dict(state)
            else:
                m.num_batches_tracked.copy_(state["num_batches_tracked"])
        for m, training in modes.items():
            m.training = training
    return sum(1 for m in norms if not torch.equal(m.running_mean, saved[m][1]["running_mean"]))
