"""Choosing the fastest correct way to run a training step on this machine, by measuring it.

Whether channels-last memory (N x H x W x C) and bfloat16 autocast speed a step up depends on
the model, the input size and the hardware: on this project's 2-core AVX-512-BF16 CPU, a
ResNet-18 step at 96x96 ran 2.1x faster in channels-last bf16 than in contiguous fp32, while
LeNet-BN at 28x28 was fastest contiguous fp32. So nothing is assumed: the candidates take
turns running steps on throwaway copies of the model with a real batch, and the fastest wins.
The choice is written into the run's config.toml, so a rerun or a resume uses it without
measuring again.
Deterministic runs never measure: timing noise must not pick their arithmetic.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import statistics
import time

import torch
from torch import nn

from cnnlab.train.evaluate import autocast


def candidates(device: torch.device, precision: str, memory_format: str, deterministic: bool):
    """The (precision, memory format) pairs worth timing."""
    if deterministic:
        precisions = ["fp32"] if precision == "auto" else [precision]
        formats = ["contiguous"] if memory_format == "auto" else [memory_format]
    else:
        gpu_precisions = ["fp32", "bf16", "fp16"]
        auto = gpu_precisions if device.type == "cuda" else ["fp32", "bf16"]
        precisions = auto if precision == "auto" else [precision]
        formats = ["contiguous", "channels_last"] if memory_format == "auto" else [memory_format]
    return list(itertools.product(precisions, formats))


class Trial:
    """A throwaway copy of the model in one (precision, memory format), ready to time steps."""

    def __init__(self, model, images, labels, criterion, device, precision, memory_format):
        self.model = copy.deepcopy(model)
        self.images, self.labels, self.criterion = images, labels, criterion
        self.device, self.precision = device, precision
        if memory_format == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.images = images.contiguous(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.0)

    def step_seconds(self) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            outputs = self.model(self.images)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        self.criterion(logits.float(), self.labels).backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def choose(
    model: nn.Module, images, labels, criterion, device, options, warmup: int = 2, rounds: int = 4
) -> tuple[str, str, dict]:
    """The fastest (precision, memory format) among `options`, and the median step time of
    each. Candidates take turns step by step, so a burst of load elsewhere on the machine hits
    them all rather than deciding the race."""
    if len(options) == 1:
        return (*options[0], {})
    trials = {
        f"{precision}/{memory_format}": Trial(
            model, images, labels, criterion, device, precision, memory_format
        )
        for precision, memory_format in options
    }
    times: dict[str, list[float]] = {name: [] for name in trials}
    for round_number in range(warmup + rounds):
        for name, trial in trials.items():
            seconds = trial.step_seconds()
            if round_number >= warmup:
                times[name].append(seconds)
    timings = {name: statistics.median(values) for name, values in times.items()}
    best = min(timings, key=timings.get)
    precision, memory_format = best.split("/")
    return precision, memory_format, timings


def settle(config, model, loader, criterion, device, echo):
    """`config` with `precision` and `memory_format` settled: "auto" becomes the fastest
    measured choice, timed on the loader's first batch without moving torch's RNG."""
    options = candidates(device, config.precision, config.memory_format, config.deterministic)
    if len(options) == 1:
        precision, memory_format = options[0]
    else:
        images, labels = next(iter(loader.epoch_batches(0)))
        with torch.random.fork_rng(devices=[]):
            precision, memory_format, timings = choose(
                model, images, labels, criterion, device, options
            )
        measured = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items())
        echo(f"fastest step: {precision}/{memory_format} (per step: {measured})")
    return dataclasses.replace(config, precision=precision, memory_format=memory_format)
