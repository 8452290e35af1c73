"""Benchmark: training throughput of cnnlab's trainer against a d2l-style loop (issue 5, table 1).

For each classic model at d2l's Fashion-MNIST resolution, batch size and learning rate (the
recipes in recipes/d2l/*.toml), training images/s of

- cnnlab: the real trainer machinery (`Trainer.setup`, `InMemoryLoader.epoch_batches`,
  `Trainer.step`, metrics accumulated on the device as in `Trainer.train_epoch`), at
  `--precision` (fp32, bf16, or auto: the trainer's measured choice);
- reference: plain PyTorch written the way d2l's `train_ch6` works, always fp32: a `DataLoader`
  over a Dataset that converts, resizes (`F.interpolate`, one sample at a time, where d2l uses
  `transforms.Resize` + `ToTensor`) and normalises each sample; per batch forward, loss,
  backward, SGD step, then `float()` of the loss and of the correct count (a host sync each).
  `num_workers=0` by default: on the 2-core machine the step already keeps both cores busy and
  a batch's per-sample transforms cost ~3 ms at 28x28 (~28 ms at 224x224, against seconds per
  step); `--workers 4` is d2l's setting. With workers, the reference's DataLoader prefetches up
  to 2 x workers batches while cnnlab's steps run (slowing those, and speeding its own round).

Both run in one process, alternating (cnnlab k steps, reference k steps, repeated) after a
warm-up, with data loading included; the table gives the median images/s of each, their ratio,
and the share of the machine's compute ceiling (the best measured FLOP/s of GEMMs and 3x3
convolutions, in the precision cnnlab's step ran in) that cnnlab's step reaches, counting
3 x 2 x MACs training FLOPs per image (MACs from `cnnlab.analysis.summarize`).

Run: CNNLAB_DATA=../shared/data python benchmarks/throughput.py
     [--models lenet alexnet ...] [--steps K] [--rounds R] [--precision fp32|bf16|auto]
     [--device auto|cpu|cuda] [--workers N] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnlab.analysis import summarize
from cnnlab.models import create_model
from cnnlab.runs.config import TrainConfig, load_toml
from cnnlab.train.metrics import RunningMetrics
from cnnlab.train.setup import load_run_data
from cnnlab.train.trainer import Trainer, resolve_device

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "d2l"
ORDER = ("lenet", "lenet_bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet_d2l")
ROUND_SECONDS = 1.0  # --steps auto: about this much of cnnlab's step time per round


def recipes() -> dict[str, dict]:
    """d2l's settings per model name, from recipes/d2l/*.toml."""
    found = {}
    for path in RECIPES.glob("*.toml"):
        values = load_toml(path)
        found[values["model"]] = values
    return {name: found[name] for name in ORDER if name in found}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(run, device: torch.device, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def compute_ceiling(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The machine's best measured FLOP/s in `dtype`: the fastest of square `torch.mm`s and of
    3x3 convolutions (channels-last, the shapes of VGG/ResNet stages), best of `repeats` each.
    A single large GEMM is not the ceiling: oneDNN's convolutions beat it on some CPUs."""
    rates = []
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = best_seconds(lambda a=a, b=b: torch.mm(a, b), device, repeats)
        rates.append(2 * n**3 / seconds)
    for batch, channels, side in ((32, 64, 56), (32, 128, 28), (64, 256, 14)):
        x = torch.randn(batch, channels, side, side, device=device).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 3, 3, device=device).to(dtype)
        w = w.contiguous(memory_format=torch.channels_last)
        seconds = best_seconds(lambda x=x, w=w: F.conv2d(x, w, padding=1), device, repeats)
        rates.append(2 * batch * side * side * channels * channels * 9 / seconds)
    return max(rates)


class PerSampleImages(Dataset):
    """d2l's `load_data_fashion_mnist(batch_size, resize)`: every sample converted on its own."""

    def __init__(self, images, labels, size: int, mean, std):
        self.images, self.labels, self.size = images, labels, size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index].to(torch.float32).div(255.0)
        if image.shape[-1] != self.size:
            size = (self.size, self.size)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return (image - self.mean) / self.std, int(self.labels[index])


def forever(batches_of_epoch):
    """The batches of epoch 0, 1, 2, ... in one stream."""
    for epoch in itertools.count():
        yield from batches_of_epoch(epoch)


class Ours:
    """cnnlab's trainer step path: the loop of `Trainer.train_epoch`, without progress bar."""

    def __init__(self, trainer: Trainer):
        self.trainer, device = trainer, trainer.device
        trainer.model.train()
        self.batches = forever(trainer.train_loader.epoch_batches)
        self.metrics = RunningMetrics()
        self.clipped = torch.zeros((), dtype=torch.int64, device=device)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def run(self, steps: int) -> int:
        seen = 0
        for images, labels in itertools.islice(self.batches, steps):
            loss, logits = self.trainer.step(images, labels, self.clipped)
            self.counter += 1
            bad = ~torch.isfinite(loss)
            self.first_bad = torch.where(bad & (self.first_bad < 0), self.counter, self.first_bad)
            self.metrics.update(loss.detach() * len(labels), logits, labels)
            seen += len(labels)
        self.metrics.result()  # the host read the trainer does at the end of an epoch
        if int(self.first_bad) >= 0:
            raise RuntimeError(f"{self.trainer.config.model}: non-finite training loss")
        return seen


class Reference:
    """d2l's `train_ch6`: DataLoader batches, fp32, `float()` of loss and accuracy per batch."""

    def __init__(self, trainer: Trainer, workers: int):
        config, data, self.device = trainer.config, trainer.data, trainer.device
        dataset = PerSampleImages(
            data.train.images, data.train.labels, config.resize, data.mean, data.std
        )
        loader = DataLoader(dataset, config.batch_size, shuffle=True, num_workers=workers)
        self.batches = forever(lambda epoch: iter(loader))
        self.model = create_model(
            config.model,
            num_classes=trainer.num_classes,
            in_channels=dataset.mean.shape[0],
            **config.model_options,
        ).to(self.device)
        self.model.load_state_dict(trainer.model.state_dict())  # the same starting weights
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr)
        self.loss = nn.CrossEntropyLoss()
        self.loss_sum = self.correct = 0.0

    def run(self, steps: int) -> int:
        self.model.train()
        seen = 0
        for images, labels in itertools.islice(self.batches, steps):
            self.optimizer.zero_grad()
            images, labels = images.to(self.device), labels.to(self.device)
            logits = self.model(images)
            loss = self.loss(logits, labels)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.loss_sum += float(loss) * len(labels)
                self.correct += float((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
        return seen


def images_per_second(loop, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    seen = loop.run(steps)
    sync(device)
    return seen / (time.perf_counter() - start)


def measure(name: str, recipe: dict, data, args, device: torch.device, ceilings: dict):
    """The table row of one model, and a note on the path the trainer chose."""
    config = TrainConfig(
        model=name,
        dataset="fashion-mnist",
        batch_size=recipe["batch_size"],
        resize=recipe["resize"],
        lr=recipe["lr"],
        model_options=dict(recipe.get("model_options", {})),
        quiet=True,
        precise_bn=0,
        device=args.device,
        precision=args.precision,
    )
    said: list[str] = []  # what the trainer reports while setting up (its fast-path choice)
    trainer = Trainer(config, echo=said.append, data=data)
    trainer.setup(create_run=False)
    ours, reference = Ours(trainer), Reference(trainer, args.workers)
    size, batch = trainer.config.resize, trainer.config.batch_size
    ours.run(args.warmup)
    reference.run(args.warmup)
    steps = args.steps
    if not steps:  # auto: rounds of about ROUND_SECONDS of our step
        steps = max(2, round(ROUND_SECONDS * images_per_second(ours, 2, device) / batch))
    ours_rates, reference_rates = [], []
    for _ in range(args.rounds):
        ours_rates.append(images_per_second(ours, steps, device))
        reference_rates.append(images_per_second(reference, steps, device))
    ours_rate, reference_rate = statistics.median(ours_rates), statistics.median(reference_rates)
    with torch.device("meta"):
        meta = create_model(name, num_classes=10, in_channels=1, **config.model_options)
    macs = summarize(meta, (1, size, size)).total_macs
    share = ours_rate * 3 * 2 * macs / ceilings[trainer.config.precision]
    row = (
        f"| {name} | {size}x{size} | {batch} | {reference_rate:,.0f} | {ours_rate:,.0f} | "
        f"{ours_rate / reference_rate:.2f}x | {share:.1%} |"
    )
    chosen = trainer.config
    path = f"{chosen.precision}/{getattr(chosen, 'memory_format', 'contiguous')}"
    return row, "; ".join([f"- {name}: cnnlab ran {path}, {steps} steps per round", *said])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=ORDER, help="default: all eight")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: ~1 s rounds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each loop first")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=0, help="the reference's DataLoader workers")
    parser.add_argument("--quick", action="store_true", help="lenet, lenet_bn; 2 steps, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["lenet", "lenet_bn"]
        args.steps, args.rounds, args.warmup = 2, 2, 2
    args.models = args.models or list(ORDER)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not os.environ.get("CNNLAB_DATA"):
        sys.exit("set CNNLAB_DATA to the folder holding fashion-mnist/ (e.g. ../shared/data)")
    device = resolve_device(args.device)
    ceilings = {"fp32": compute_ceiling(device, torch.float32)}
    if args.precision != "fp32":
        ceilings["bf16"] = compute_ceiling(device, torch.bfloat16)
        if device.type == "cuda":
            ceilings["fp16"] = compute_ceiling(device, torch.float16)
    command = shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
    print(f"- Command: `CNNLAB_DATA={os.environ['CNNLAB_DATA']} {command}`")
    print(f"- Machine: {describe(device)}, device {device}")
    print(f"- Date: {time.strftime('%Y-%m-%d')}")
    print(f"- Precision: cnnlab {args.precision}, reference fp32")
    print(
        f"- Reference: DataLoader(shuffle=True, num_workers={args.workers}), per-sample "
        "transforms, float(loss) and float(correct) every batch"
    )
    measured = ", ".join(f"{p} {c / 1e9:,.0f} GFLOP/s" for p, c in ceilings.items())
    print(
        f"- Compute ceiling (fastest of torch.mm 1024-4096 and 3x3 convs, best of 5): {measured};"
        " the % column is of the ceiling of the precision cnnlab's step ran in"
    )
    steps = args.steps or f"auto (~{ROUND_SECONDS:g} s)"
    print(f"- Rounds: {args.rounds} of {steps} steps per loop, after {args.warmup} warm-up steps\n")
    print("| model | input | batch | reference img/s | cnnlab img/s | ratio | % of ceiling |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    every = recipes()
    data = load_run_data(TrainConfig(model=args.models[0]).resolved(), progress=False)
    notes = []
    for name in args.models:
        row, note = measure(name, every[name], data, args, device, ceilings)
        print(row, flush=True)
        notes.append(note)
    print("", *notes, sep="\n")


if __name__ == "__main__":
    main()
