"""The learning-rate range test: how high can the learning rate go before training breaks?

Smith, "Cyclical Learning Rates for Training Neural Networks" (WACV 2017), section 3.3: train
for a few hundred batches while the learning rate grows from tiny to huge, and watch the loss.
While the rate is too small the loss barely moves; then it falls; past a point it climbs and
diverges. A good rate sits where the loss falls fastest, well before the minimum.

Here the rate grows exponentially, `start_lr * (end_lr / start_lr) ** (i / (steps - 1))` at
batch i, so every decade gets the same number of batches; the per-batch loss is smoothed by a
bias-corrected exponential moving average (as Adam corrects its moments, Kingma & Ba 2015), the
test stops once the smoothed loss passes `diverge` times its best, and the suggestion is the
rate at the steepest descent of the smoothed loss against log lr, before its minimum (see
`suggest_lr`).

The model, optimiser and data come from `Trainer(config).setup(create_run=False)`, so the test
sees exactly what training would (augmentation, resize, loss, auxiliary heads, clipping); they
are thrown away afterwards and nothing is written. `plots.plot_lr_find` draws the result.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.errors import CnnlabError, NonFiniteError
from cnnlab.runs.config import TrainConfig
from cnnlab.train.trainer import Trainer


@dataclass
class LrFindResult:
    lrs: list[float]  # the rate of each batch tested
    losses: list[float]  # the smoothed, bias-corrected loss after each of those batches
    suggested: float | None  # the rate at the steepest descent; None if the loss never fell
    stopped_early: bool  # the loss diverged (or became NaN/inf) before `steps` batches


def lr_find(
    config: TrainConfig,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
) -> LrFindResult:
    """Run the range test on the model, data and loss `config` describes."""
    _check_options(start_lr, end_lr, steps, smoothing, diverge)
    trainer = Trainer(_range_test_config(config, start_lr))
    trainer.setup(create_run=False)
    growth = (end_lr / start_lr) ** (1.0 / (steps - 1))
    # trainer.step advances the scheduler after every optimizer step: batch i runs at
    # start_lr * growth ** i.
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda step: growth**step
    )
    trainer.model.train()
    clipped = torch.zeros((), dtype=torch.int64, device=trainer.device)
    lrs: list[float] = []
    losses: list[float] = []
    average, best, stopped_early = 0.0, math.inf, False
    for index, (images, labels) in enumerate(_batches(trainer.train_loader, steps)):
        lr = trainer.lr()
        try:
            loss, _ = trainer.step(images, labels, clipped)
        except NonFiniteError:  # a NaN/inf loss or gradient: the step was refused
            stopped_early = True
            break
        value = float(loss)  # one host sync per batch: the stopping rule needs the value now
        average = smoothing * average + (1.0 - smoothing) * value
        smoothed = average / (1.0 - smoothing ** (index + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > diverge * best:
            stopped_early = True
            break
    return LrFindResult(lrs, losses, suggest_lr(lrs, losses), stopped_early)


def suggest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the loss falls fastest against log lr, looked for between the first tenth
    of the batches and the lowest loss; None where the loss never falls in that stretch.

    The first tenth is skipped (as fastai's range test plot skips its first 10 of 100 batches):
    a bias-corrected average of a handful of batches is still mostly noise. Past the lowest
    loss, the loss is heading for divergence. Each slope is measured across a window of a tenth
    of the batches centred on its point (at least the two neighbours), never one-sided, so one
    lucky batch cannot make the steepest descent."""
    start = _settled(losses)
    if len(losses) - start < 2:
        return None
    lowest = start + int(np.argmin(losses[start:]))
    if lowest == start:
        return None
    if lowest == start + 1:  # the only fall there is
        return float(lrs[start])
    half = max(1, min(len(losses) // 20, (lowest - start) // 2))
    log_lrs, values = np.log(np.asarray(lrs, dtype=np.float64)), np.asarray(losses, np.float64)
    centres = np.arange(start + half, lowest - half + 1)
    slopes = (values[centres + half] - values[centres - half]) / (
        log_lrs[centres + half] - log_lrs[centres - half]
    )
    steepest = int(np.argmin(slopes))
    return float(lrs[centres[steepest]]) if slopes[steepest] < 0 else None


def format_lr_find(result: LrFindResult) -> str:
    """What the test found, in a few lines for the terminal."""
    if not result.lrs:
        return (
            "learning-rate range test: the loss was NaN or infinite from the first batch; "
            "try a smaller start lr"
        )
    lines = [
        f"learning-rate range test: {len(result.lrs)} batches, lr {result.lrs[0]:.3g} to "
        f"{result.lrs[-1]:.3g}"
        + (" (stopped early: the loss diverged)" if result.stopped_early else "")
    ]
    lowest = _settled(result.losses) + int(np.argmin(result.losses[_settled(result.losses) :]))
    lines.append(f"lowest smoothed loss {result.losses[lowest]:.4f} at lr {result.lrs[lowest]:.3g}")
    if result.suggested is None:
        lines.append(
            "no suggestion: the smoothed loss never fell (after the first tenth of the "
            "batches); try a smaller start lr or more steps"
        )
    else:
        lines.append(
            f"suggested lr: {result.suggested:.3g} (steepest descent of the smoothed loss)"
        )
    return "\n".join(lines)


def _settled(losses: list[float]) -> int:
    """Where the smoothed loss has averaged enough batches to be read: after the first tenth."""
    return len(losses) // 10


def _check_options(
    start_lr: float, end_lr: float, steps: int, smoothing: float, diverge: float
) -> None:
    if not 0 < start_lr < end_lr < math.inf:
        raise CnnlabError(
            f"the range test needs 0 < start lr < end lr, got start {start_lr}, end {end_lr}"
        )
    if not isinstance(steps, int) or steps < 2:
        raise CnnlabError(f"the range test needs at least 2 steps, got {steps!r}")
    if not 0 <= smoothing < 1:
        raise CnnlabError(f"the loss smoothing must be in [0, 1), got {smoothing}")
    if not diverge > 1:
        raise CnnlabError(f"the divergence factor must be > 1, got {diverge}")


def _range_test_config(config: TrainConfig, start_lr: float) -> TrainConfig:
    """The configuration to build from: the base rate is `start_lr`, with no schedule of its
    own (the range test replaces it) and no warmup."""
    return dataclasses.replace(
        config, lr=start_lr, schedule="constant", warmup_epochs=0.0, out=None
    )


def _batches(loader, steps: int):
    """`steps` training batches, running through as many epochs as that takes."""
    epochs = (loader.epoch_batches(epoch) for epoch in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), steps)
