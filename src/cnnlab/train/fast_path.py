"""Choosing the fastest correct way to run a training step on this machine, by measuring it.

Whether channels-last memory (N x H x W x C) and bfloat16 autocast speed a step up depends on
the model, the input size and the hardware: on this project's 2-core AVX-512-BF16 CPU, a
ResNet-18 step at 96x96 ran 2.1x faster in channels-last bf16 than in contiguous fp32, while
LeNet-BN at 28x28 was fastest contiguous fp32. So nothing is assumed: the candidates take
turns running steps on throwaway copies of the model with a real batch, and the fastest wins.
The choice is written into the run's config.toml, so a resume uses it without measuring
again, and into the user's cache (`cnnlab.train.step_choice`), so that a new run of the same
model, input and batch on the same machine does not measure either. Measuring costs at most 5%
of the planned training time; a run too short for that is not measured.
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
from cnnlab.train.step_choice import StepChoice

SHARE = 0.05  # of the planned training time, at most, spent measuring


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
    model: nn.Module,
    images,
    labels,
    criterion,
    device,
    options,
    planned_steps: int,
    share: float | None = None,
    rounds: int = 4,
) -> tuple[str, str, dict, bool]:
    """The fastest (precision, memory format) among `options`, the median step time of each,
    and whether any timed round ran; measured in at most `share` (default SHARE) of the planned
    training time (`planned_steps` steps at the fastest measured time). Candidates take turns
    step by step, so a burst of load elsewhere on the machine hits them all rather than
    deciding the race; one warm-up step each (its one-time costs, such as building kernels,
    are not a step's), then up to `rounds` timed steps while the next fits the budget, dropping
    a candidate 1.5x slower than the best after the first. With no room for a timed round, the
    warm-up times decide."""
    share = SHARE if share is None else share
    trials = {
        f"{precision}/{memory_format}": Trial(
            model, images, labels, criterion, device, precision, memory_format
        )
        for precision, memory_format in options
    }
    start = time.perf_counter()
    warm = {name: trial.step_seconds() for name, trial in trials.items()}
    times: dict[str, list[float]] = {name: [] for name in trials}
    timings = warm  # what decides if there is no room for a timed round
    for round_number in range(rounds):
        best = min(timings[name] for name in trials)
        spent = time.perf_counter() - start
        next_round = sum(timings[name] for name in trials)
        if len(trials) == 1 or spent + next_round > share * planned_steps * best:
            break
        for name in trials:
            times[name].append(trials[name].step_seconds())
        timings = {name: statistics.median(times[name] or [warm[name]]) for name in warm}
        if round_number == 0:
            best = min(timings.values())
            trials = {name: trial for name, trial in trials.items() if timings[name] < 1.5 * best}
    fastest = min(trials, key=timings.get)
    precision, memory_format = fastest.split("/")
    return precision, memory_format, timings, any(times.values())


def worth_measuring(options: list, planned_steps: int, share: float = SHARE) -> bool:
    """Whether the planned steps leave room to measure at all: two steps per candidate (a
    warm-up and a timed one) must fit in `share` of them."""
    return 2 * len(options) <= share * planned_steps


def settle(config, model, loader, criterion, device, echo, planned_steps: int):
    """`config` with `precision` and `memory_format` settled: "auto" becomes the fastest
    choice, timed on the loader's first batch without moving torch's RNG, or read from the
    machine's cache of earlier choices for the same model, input and batch. A run too short to
    pay for measuring takes the first candidate (fp32, contiguous) unmeasured."""
    options = candidates(device, config.precision, config.memory_format, config.deterministic)
    if len(options) == 1:
        precision, memory_format = options[0]
    else:
        images, labels = next(iter(loader.epoch_batches(0)))
        record = StepChoice.for_run(config, model, images, device, options)
        if cached := record.read():
            precision, memory_format = cached
            echo(f"fastest step: {precision}/{memory_format} (measured before on this machine)")
        elif not worth_measuring(options, planned_steps):
            precision, memory_format = options[0]
            echo(f"step: {precision}/{memory_format} (not measured: the run is too short)")
        else:
            with torch.random.fork_rng(devices=[]):
                precision, memory_format, timings, timed = choose(
                    model, images, labels, criterion, device, options, planned_steps
                )
            if timed:  # warm-up times include one-time costs: not worth remembering
                record.write(precision, memory_format, timings)
            measured = ", ".join(f"{name} {sec * 1e3:.1f} ms" for name, sec in timings.items())
            echo(f"fastest step: {precision}/{memory_format} (per step: {measured})")
    return dataclasses.replace(config, precision=precision, memory_format=memory_format)
