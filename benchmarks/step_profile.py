"""Benchmark: where a training step's time goes, by operator (why a speed target is missed).

Profiles cnnlab's training step (the trainer's own `step`, at the model's d2l settings, in the
precision and memory format the trainer picks, or those given) with `torch.profiler` over a
number of steps after a warm-up, and prints the operators taking the most self CPU time, with
their share of the step and how many times each runs per step. Tiny models such as LeNet-BN
are dominated by per-operator overhead (dozens of small kernels: BatchNorm, sigmoid, their
backward passes, the optimizer's per-parameter updates), not by arithmetic.

Run: CNNLAB_DATA=../shared/data python benchmarks/step_profile.py --model lenet_bn
     [--precision fp32|bf16|auto] [--steps 20] [--top 15]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from cnnlab.runs.config import TrainConfig
from cnnlab.train.trainer import Trainer


def profile_steps(model: str, precision: str, steps: int, data_dir=None) -> tuple[Trainer, list]:
    config = TrainConfig(
        model=model, quiet=True, precise_bn=0, precision=precision, data_dir=data_dir
    )
    trainer = Trainer(config, echo=lambda line: None)
    trainer.setup(create_run=False)
    loader = trainer.train_loader
    batches = (batch for epoch in itertools.count() for batch in loader.epoch_batches(epoch))
    clipped = torch.zeros((), dtype=torch.int64)
    trainer.model.train()
    for _ in range(3):
        trainer.step(*next(batches), clipped)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(*next(batches), clipped)
    return trainer, prof.key_averages()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet_bn")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not os.environ.get("CNNLAB_DATA"):
        sys.exit("set CNNLAB_DATA to the folder holding fashion-mnist/ (e.g. ../shared/data)")
    trainer, events = profile_steps(args.model, args.precision, args.steps)
    total = sum(e.self_cpu_time_total for e in events)
    config = trainer.config
    print(
        f"{args.model}: batch {config.batch_size}, {config.resize}x{config.resize}, "
        f"{config.precision}/{config.memory_format}, {torch.get_num_threads()} threads; "
        f"{total / args.steps / 1e3:.1f} ms of operator self time per step, "
        f"{sum(e.count for e in events) / args.steps:.0f} operator calls per step\n"
    )
    print("| operator | self CPU ms per step | share | calls per step |")
    print("|---|---:|---:|---:|")
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in ranked[: args.top]:
        print(
            f"| `{event.key}` | {event.self_cpu_time_total / args.steps / 1e3:.2f} | "
            f"{event.self_cpu_time_total / total:.1%} | {event.count / args.steps:g} |"
        )


if __name__ == "__main__":
    main()
