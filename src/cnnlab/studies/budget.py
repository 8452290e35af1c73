"""`cnnlab train --budget 5m`: the best classic CNN this machine can train on a dataset in a
given wall time, from process start to the final test accuracy.

How it plans. The data is loaded first (from the decode cache when it can be). With `--model M`
the only candidate is M (its resolution, batch and schedule are planned); otherwise the
candidates are the fast recipes' FastNet family in three sizes, each with the fewest epochs it
needs to be worth choosing over the smaller one (`SIZES`). Smallest first, each candidate is
built, its settings are chosen from the data (`runs.data_fit`), and a few of its training
steps are timed on a real batch, until one does not get its fewest worthwhile epochs in the
time left (the larger ones would not either). The largest that does wins, and trains for as
many steps as fit after reserving the final evaluation and report (the last epoch cut short),
with a one-cycle schedule that ends on the last step.

How it keeps time. After every epoch the steps still fitting are counted again from the wall
time the steps took so far: if they turn out slower than timed, the run shortens (its one-cycle
schedule is re-drawn for the new length, so the learning rate still anneals); if faster, it
lengthens (freely while the learning rate still rises, later by at most a tenth).

The choices use timings and the training split only (no validation split is needed, since no
choice looks at accuracy); the test split is evaluated once, at the end. The plan and its
reasons go into config.toml (`data_choices`) and budget.json; the timeline has a `planned`
stage. Resuming a budget run trains its planned epochs in full, without the deadline.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.clock import seconds_since_start
from cnnlab.data.loader import InMemoryLoader
from cnnlab.errors import CnnlabError
from cnnlab.runs.config import TrainConfig, config_from
from cnnlab.runs.data_fit import has_tuned_defaults
from cnnlab.train.fast_path import SHARE, Trial, candidates
from cnnlab.train.optim import build_schedule
from cnnlab.train.setup import (
    build_model,
    fit_to_run_data,
    load_run_data,
    pipelines,
    resolve_device,
)
from cnnlab.train.step_choice import StepChoice
from cnnlab.train.trainer import Trainer

UNITS = {"s": 1, "m": 60, "h": 3600}
# FastNet sizes: name, (widths at 32x32, stem width, convs per block), fewest epochs worth it.
# On 28x28 grayscale sets, the tuned recipes' networks (runs/recipes.py) and one twice as wide.
SIZES = (
    ("fastnet-s", ([32, 64, 128], 0, 1), 1),
    ("fastnet-m", ([64, 128, 256], 32, 2), 4),
    ("fastnet-l", ([96, 192, 384], 48, 2), 10),
)
GRAY_SIZES = (
    ("fastnet-s", ([16, 32, 64], 0, 1), 1),
    ("fastnet-m", ([32, 64, 128], 24, 2), 2),
    ("fastnet-l", ([64, 128, 256], 32, 2), 10),
)
# On those sets, longer runs of the recipes' larger networks take their augmentation (the
# smallest network under-fits with it): (fewest epochs, augment).
GRAY_AUGMENT = ((12, "crop,flip"), (4, "flip"))
MARGIN = 1.05  # planned epochs are timed 5% slower than measured
FIXED_SECONDS = 3.0  # planned for building the model, measuring its step, the report
REPORT_SECONDS = 0.5  # kept free after training for the report and weights
TIMED_STEPS = 2  # at least, after a warm-up step
TIMING_SECONDS = 0.5  # fast steps are timed until they took this long (at most 8)


def parse_duration(text: str) -> float:
    """Seconds in "90s", "5m", "1.5h" or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise CnnlabError(f"--budget {text!r}: expected a duration such as 90s, 5m or 1h")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


@dataclass
class Candidate:
    name: str
    config: TrainConfig
    min_epochs: int
    step_seconds: float = math.nan
    epoch_seconds: float = math.nan
    final_seconds: float = math.nan
    steps: int = 0  # training steps that fit
    steps_per_epoch: int = 1

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch


def train_within_budget(values: dict, budget: str, echo=print, started_at: float | None = None):
    """Plan and train within `budget` (see the module docstring); `values` are `cnnlab train`'s
    settings, `started_at` the moment the budget counts from, in seconds since the process
    started (default 0: the process's start). Returns the finished trainer."""
    seconds = parse_duration(budget)
    deadline = (started_at or 0.0) + seconds
    base = _base_config(values)
    data = load_run_data(base, progress=not base.quiet)
    loaded = seconds_since_start()
    device = resolve_device(base.device)
    candidates = []
    for candidate in _candidates(base, values, data, device):  # smallest first
        candidates.append(_timed(candidate, data, device))
        _fit_steps(candidate, deadline)
        if candidate.epochs < candidate.min_epochs:
            break  # the larger ones, slower still, would not fit either: not worth timing
    left = deadline - seconds_since_start()
    for candidate in candidates:  # again, now that the timing of every candidate is spent
        _fit_steps(candidate, deadline)
    chosen = _choose(candidates, budget, left)
    config = _planned_config(chosen, budget, candidates, "augment" in values)
    echo(f"budget {budget}: {config.data_choices['budget']}")
    trainer = BudgetTrainer(config, echo=echo, data=data)
    trainer.deadline = deadline - chosen.final_seconds - REPORT_SECONDS
    trainer.total_steps = chosen.steps
    trainer.timeline.update(data_loaded=round(loaded, 3), planned=round(seconds_since_start(), 3))
    trainer.plan = {
        "budget_s": seconds,
        "deadline_s": round(deadline, 3),
        "chosen": chosen.name,
        "candidates": [_describe(c) for c in candidates],
    }
    trainer.fit()
    return trainer


def _fit_steps(candidate: Candidate, deadline: float) -> None:
    """The steps that fit before `deadline` after the fixed costs and the final evaluation,
    and (when the trainer may measure the step) the 5% that measuring can take."""
    spare = deadline - seconds_since_start() - candidate.final_seconds - FIXED_SECONDS
    measuring = (
        1 + SHARE if "auto" in (candidate.config.precision, candidate.config.memory_format) else 1
    )
    per_step = candidate.step_seconds * MARGIN * measuring
    candidate.steps = max(0, math.floor(spare / per_step))


def _base_config(values: dict) -> TrainConfig:
    values = dict(values)
    if "model" not in values:
        values.setdefault("recipe", "fast")
    else:
        values.setdefault("schedule", "onecycle")
    values.setdefault("precision", "auto")
    return config_from(values).resolved()


def _candidates(base: TrainConfig, values: dict, data, device) -> list[Candidate]:
    if "model" in values or "model_options" in values or base.model != "fastnet":
        return [Candidate(base.model, fit_to_run_data(base, data, device, _silent), 1)]
    found = []
    sizes = GRAY_SIZES if has_tuned_defaults(base.dataset) else SIZES
    for name, (widths, stem, depth), min_epochs in sizes:
        fitted = fit_to_run_data(base, data, device, _silent)  # resolution, batch, lr, ...
        extra = fitted.model_options["widths"][3:]  # stages added for large images
        extra = [widths[-1]] * len(extra)
        options = {"widths": widths + extra, "stem_width": stem, "depth": depth}
        choices = {**fitted.data_choices, "model_options": f"the {name} size of the family"}
        config = dataclasses.replace(fitted, model_options=options, data_choices=choices)
        found.append(Candidate(name, config, min_epochs))
    return found


def _timed(candidate: Candidate, data, device) -> Candidate:
    """The candidate with its step, epoch and final-evaluation times measured on a real batch,
    in the step format the machine chose before for it (else its likely fastest)."""
    config = candidate.config
    model = build_model(config, len(data.classes), data.train.image_size[0]).to(device)
    train_pipeline, _ = pipelines(config, data)
    loader = InMemoryLoader(
        data.train.images, data.train.labels, config.batch_size, device=device,
        pipeline=train_pipeline,
    )  # fmt: skip
    images, labels = next(iter(loader.epoch_batches(0)))
    options = candidates(device, config.precision, config.memory_format, config.deterministic)
    remembered = StepChoice.for_run(config, model, images, device, options).read()
    precision, memory_format = remembered or _likely_fastest(device, options)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    with torch.random.fork_rng(devices=[]):
        trial = Trial(model, images, labels, criterion, device, precision, memory_format)
        trial.step_seconds()  # warm-up: one-time costs
        times = [trial.step_seconds() for _ in range(TIMED_STEPS)]
        while sum(times) < TIMING_SECONDS and len(times) < 4 * TIMED_STEPS:
            times.append(trial.step_seconds())  # a fast step: worth a few more to settle
        step = min(times)
    candidate.step_seconds = step
    candidate.epoch_seconds = step * len(loader)
    candidate.steps_per_epoch = len(loader)
    test_images = len(data.test) if data.test is not None else 0
    passes = 2 if config.tta == "flip" else 1
    # an evaluation batch is twice a training batch; its forward pass ~1/3 of a training step
    candidate.final_seconds = math.ceil(test_images / config.batch_size) * step / 3 * passes
    return candidate


def _likely_fastest(device: torch.device, options: list) -> tuple[str, str]:
    """Among the step formats the run may take, the one likeliest fastest: bf16 channels-last
    where the hardware computes in bf16, else fp32 contiguous (the trainer measures later)."""
    bf16 = device.type == "cuda" or (
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    preferred = [("bf16", "channels_last"), ("fp32", "contiguous")] if bf16 else []
    return next((option for option in preferred if option in options), options[0])


def _choose(candidates: list[Candidate], budget: str, left: float) -> Candidate:
    worth = [c for c in candidates if c.epochs >= c.min_epochs]
    if worth:
        return worth[-1]
    smallest = candidates[0]
    if smallest.steps >= 1:
        return smallest
    needed = smallest.epoch_seconds * MARGIN + smallest.final_seconds + FIXED_SECONDS
    raise CnnlabError(
        f"--budget {budget} is too short: {left:.0f} s are left after loading the data, and "
        f"one epoch of {smallest.name} with its final evaluation needs about {needed:.0f} s; "
        f"give at least {math.ceil(parse_duration(budget) - left + needed)} s"
    )


def _planned_config(
    chosen: Candidate, budget: str, candidates: list[Candidate], augment_given: bool
) -> TrainConfig:
    timed = ", ".join(
        f"{c.name} {c.epoch_seconds:.1f} s/epoch ({c.epochs:.2f} fit)" for c in candidates
    )
    reason = (
        f"{chosen.name}, {chosen.epochs:.2f} epochs of ~{chosen.epoch_seconds:.1f} s at "
        f"{chosen.config.resize}x{chosen.config.resize}, batch {chosen.config.batch_size}"
        f" (timed: {timed})"
    )
    if len(candidates) > 1:
        reason += "; the largest whose fewest worthwhile epochs fit"
    choices = {**chosen.config.data_choices, "budget": reason}
    epochs = math.ceil(chosen.epochs)
    config = dataclasses.replace(chosen.config, epochs=epochs, data_choices=choices)
    if has_tuned_defaults(config.dataset) and not augment_given and chosen.name != "fastnet-s":
        for fewest, augment in GRAY_AUGMENT:
            if chosen.epochs >= fewest:
                config = dataclasses.replace(config, augment=augment, tta="flip")
                choices["augment"] = f"{augment}: as the tuned recipes of {fewest}+ epochs"
                break
    return config


def _describe(candidate: Candidate) -> dict:
    return {
        "name": candidate.name,
        "model": candidate.config.model,
        "model_options": candidate.config.model_options,
        "step_s": round(candidate.step_seconds, 4),
        "epoch_s": round(candidate.epoch_seconds, 2),
        "final_evaluation_s": round(candidate.final_seconds, 2),
        "epochs_that_fit": round(candidate.epochs, 2),
        "fewest_worthwhile_epochs": candidate.min_epochs,
    }


def _silent(line: str) -> None:
    pass


class StepLimit:
    """The training loader, with the run's last epoch cut short after `limit` batches: a
    budget rarely fits a whole number of epochs."""

    def __init__(self, loader, last_epoch: int, limit: int):
        self.loader, self.last_epoch, self.limit = loader, last_epoch, limit

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch_batches(self, epoch: int, start: int = 0, augment_state=None):
        batches = self.loader.epoch_batches(epoch, start, augment_state)
        if epoch != self.last_epoch:
            yield from batches
            return
        for index, batch in enumerate(batches, start=start):
            if index >= self.limit:
                return
            yield batch


class BudgetTrainer(Trainer):
    """A trainer that trains `total_steps` steps (the last epoch cut short) and re-plans them
    after each epoch to end by `deadline` (seconds since the process started), the final
    evaluation excluded."""

    deadline: float = math.inf
    total_steps: int = 0
    plan: dict

    def mark(self, stage: str) -> None:
        if stage != "data_loaded" or stage not in self.timeline:  # loaded before planning
            super().mark(stage)

    def setup(self, create_run: bool = True) -> None:
        super().setup(create_run)
        self.full_loader = self.train_loader
        self.replan(self.total_steps, announce=False)

    def ended(self) -> bool:
        if super().ended():
            return True
        if not self.history:  # asked before the first epoch too
            return False
        done = self.scheduler.last_epoch  # optimizer steps so far (the last epoch may be short)
        if done >= self.total_steps:
            return True
        # wall time per step, so each epoch's evaluation and checkpoint count too
        step = (seconds_since_start() - self.timeline["training_started"]) / done
        fit = done + math.floor((self.deadline - seconds_since_start()) / step)
        # growing re-draws the schedule longer: freely in one-cycle's rising part, later by
        # at most a tenth (the learning rate then rises a little, briefly)
        warming = done < 0.3 * self.total_steps
        fit = fit if warming else min(fit, math.floor(1.1 * self.total_steps))
        if fit < self.total_steps or fit > 1.02 * self.total_steps:
            if fit <= done:
                self.echo(f"budget: no time for another step; stopping after {done}")
                return True
            self.replan(fit)
        return False

    def replan(self, total_steps: int, announce: bool = True) -> None:
        """Train `total_steps` in all: the epochs, the last one's length and the schedule
        re-drawn for them, at the step reached."""
        per_epoch = len(self.full_loader)
        epochs = math.ceil(total_steps / per_epoch)
        if announce:
            self.echo(
                f"budget: epochs take {self.history[-1]['seconds']:.1f} s; now {total_steps} "
                f"steps ({total_steps / per_epoch:.2f} epochs)"
            )
        self.total_steps = total_steps
        self.config = dataclasses.replace(self.config, epochs=epochs)
        self.train_loader = StepLimit(
            self.full_loader, epochs - 1, total_steps % per_epoch or per_epoch
        )
        steps = self.scheduler.last_epoch
        warmup = self.config.warmup_epochs * per_epoch / total_steps  # as a share of the run
        fresh = build_schedule(
            self.optimizer, self.config.schedule, 1, total_steps, warmup_epochs=min(warmup, 1.0)
        )
        fresh.last_epoch = steps
        for group, multiplier in zip(self.optimizer.param_groups, fresh.lr_lambdas, strict=True):
            group["lr"] = group["initial_lr"] * multiplier(steps)
        self.scheduler = fresh
        if announce and self.ranks.is_main:
            self.run.write_config(self.config)

    def finish(self) -> None:
        started = self.plan["deadline_s"] - self.plan["budget_s"]
        self.echo(
            f"budget: trained {self.scheduler.last_epoch} steps by "
            f"{seconds_since_start() - started:.1f}"
            f" s of {self.plan['budget_s']:.0f} s; the final evaluation next"
        )
        super().finish()
        self.plan["steps_planned"] = self.total_steps
        self.plan["steps_trained"] = self.scheduler.last_epoch
        self.plan["used_s"] = round(seconds_since_start() - started, 3)
        if self.ranks.is_main:
            self.run.write_json("budget.json", self.plan)
