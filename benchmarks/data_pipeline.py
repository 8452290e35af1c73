"""Benchmark: the data pipeline against the training step it feeds (issue 3's targets).

1. Loading the real Fashion-MNIST (train + test) from $CNNLAB_DATA into memory, in a fresh
   process each time (median and best of several runs). Target: under 2 s.
2. LeNet at 28x28, batch 256: producing one augmented batch (InMemoryLoader + crop,flip; and
   crop,flip,erase) against one training step (forward, backward, SGD update). Target: < 5%.
3. AlexNet at 224 (d2l's Fashion-MNIST setting), batch 64: producing a resized batch
   (28 -> 224, crop,flip) against one training step. Target: resizing does not dominate.

Batch production and training steps are timed alternately in the same process, and the ratio
of medians is reported, since these machines are noisy.

Run: CNNLAB_DATA=../shared/data python benchmarks/data_pipeline.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import torch
from machine import describe
from torch import nn

from cnnlab.data import load_dataset
from cnnlab.data.augment import BatchPipeline, parse_augmentations
from cnnlab.data.loader import InMemoryLoader
from cnnlab.models import create_model

LOAD_SNIPPET = (
    "import time; from cnnlab.data import load_dataset; t = time.perf_counter(); "
    "load_dataset('fashion-mnist', 'train', download=False); "
    "load_dataset('fashion-mnist', 'test', download=False); print(time.perf_counter() - t)"
)


def load_times(runs: int = 5) -> list[float]:
    return [
        float(subprocess.check_output([sys.executable, "-c", LOAD_SNIPPET], text=True))
        for _ in range(runs)
    ]


def step_vs_batch(model_name: str, size: int, batch: int, augment: str, rounds: int):
    """Median seconds of producing one batch and of one training step, timed alternately."""
    data = load_dataset("fashion-mnist", "train", download=False)
    mean, std = data.mean_std()
    pipeline = BatchPipeline(mean, std, size=size, train_ops=parse_augmentations(augment))
    loader = InMemoryLoader(data.images, data.labels, batch, seed=0, pipeline=pipeline)
    model = create_model(model_name, num_classes=10, in_channels=1).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batches = iter(loader)
    produce, step = [], []
    for _ in range(rounds + 2):  # the first two rounds warm up
        start = time.perf_counter()
        images, labels = next(batches)
        produce.append(time.perf_counter() - start)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()
        step.append(time.perf_counter() - start)
    return statistics.median(produce[2:]), statistics.median(step[2:])


CASES = [
    ("lenet", 28, 256, "none", 60),
    ("lenet", 28, 256, "crop,flip", 60),
    ("lenet", 28, 256, "crop,flip,erase", 60),
    ("alexnet", 224, 64, "crop,flip", 8),
]


def table_rows() -> None:
    for model_name, size, batch, augment, rounds in CASES:
        produce, step = step_vs_batch(model_name, size, batch, augment, rounds)
        print(
            f"| {model_name} | {size}x{size} | {batch} | {augment} | "
            f"{produce * 1e3:.2f} ms | {step * 1e3:.1f} ms | {produce / step:.1%} |",
            flush=True,
        )


def main() -> None:
    if not os.environ.get("CNNLAB_DATA"):
        sys.exit("set CNNLAB_DATA to the folder holding fashion-mnist/ (e.g. ../shared/data)")
    print(f"Machine: {describe()}")
    print(f"Date: {time.strftime('%Y-%m-%d')}\n")
    loads = load_times()
    print(
        f"Load Fashion-MNIST train+test (fresh process, {len(loads)} runs): "
        f"median {statistics.median(loads):.3f} s, best {min(loads):.3f} s\n"
    )
    print("| model | input | batch | augmentation | batch production | train step | ratio |")
    print("|---|---|---:|---|---:|---:|---:|", flush=True)
    table_rows()


if __name__ == "__main__":
    main()
