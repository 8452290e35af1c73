"""Benchmark: how training cost grows with batch size, resolution and model (issue 5, table 3).

For each model from LeNet to ResNet-50, training images/s and peak memory of one training step
(forward, loss, backward, SGD-with-momentum update), in two sweeps:

- batch size at a fixed input resolution (`--size`, default 64: small enough for ResNet-50 on
  a 2-core CPU, large enough for every model's minimum input);
- input resolution at a fixed batch size (`--batch`, default 32).

Every point runs in a fresh child process, so peak memory is that point's own: the child
builds the model and a batch, resets the kernel's resident-memory high-water mark
(/proc/self/clear_refs), runs the steps, and reports the high-water mark (VmHWM) and its rise
over the resident memory before the first step, which is what the step itself needs
(activations kept for the backward pass, gradients, optimizer state, oneDNN workspaces).
Inputs are random single-channel images and 10 classes (Fashion-MNIST-shaped); the arithmetic
does not depend on pixel values. Models run channels-last in the given `--precision` (bf16:
autocast; the trainer's usual choice for these models on this CPU).

Run: python benchmarks/scaling.py [--models lenet resnet50 ...] [--precision bf16|fp32]
     [--batches 16 64 256] [--sizes 32 64 128 224] [--size 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

MODELS = ("lenet", "fastnet", "alexnet", "vgg11", "resnet18", "resnet50")
MIN_SECONDS = 2.0  # time at least this much of steps per point, and at least 3 steps


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def child(model_name: str, batch: int, size: int, precision: str) -> dict:
    """One point: images/s and memory of training steps, in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_channels=1)
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = model(images)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    before = memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident size
    step()  # warm-up: oneDNN picks and caches its kernels, the optimizer makes its state
    step()
    times = []
    while len(times) < 3 or sum(times) < MIN_SECONDS:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    return {
        "model": model_name,
        "batch": batch,
        "size": size,
        "images_per_s": batch / seconds,
        "step_s": seconds,
        "peak_mib": memory_kib("VmHWM") / 1024,
        "step_mib": (memory_kib("VmHWM") - before) / 1024,
    }


def measure(model: str, batch: int, size: int, precision: str) -> dict | None:
    """A point in a child process; None where the model cannot take the input size."""
    from cnnlab.models import create_model

    minimum = create_model(model, num_classes=10, in_channels=1).default_cfg.min_input_size
    if size < max(minimum):
        return None
    command = [sys.executable, __file__, "--child", model, str(batch), str(size), precision]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def macs(model: str, size: int) -> int:
    from cnnlab.analysis import summarize
    from cnnlab.models import create_model

    network = create_model(model, num_classes=10, in_channels=1)
    return summarize(network, (1, size, size)).total_macs


def cell(point: dict | None) -> str:
    if point is None:
        return "below minimum input"
    return f"{point['images_per_s']:,.0f} img/s, {point['step_mib']:,.0f} MiB"


def sweep_table(title: str, column: str, values: list[int], points: dict) -> list[str]:
    lines = [title, "", "| model | " + " | ".join(f"{column} {v}" for v in values) + " |"]
    lines.append("|---|" + "---:|" * len(values))
    for model, row in points.items():
        lines.append(f"| {model} | " + " | ".join(cell(row[v]) for v in values) + " |")
    return [*lines, ""]


def growth_table(args, batch_points: dict) -> list[str]:
    """Cost per image from LeNet up, at --size and batch --batch (from the batch sweep)."""
    lines = [
        f"Cost growth at {args.size}x{args.size}, batch {args.batch}:",
        "",
        "| model | MACs per image | x LeNet | images/s | time per image x LeNet | "
        "training GFLOP/s (3 x 2 x MACs x img/s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base_macs, base_rate = None, None
    for model, row in batch_points.items():
        point = row.get(args.batch)
        if point is None:
            continue
        count = macs(model, args.size)
        base_macs = base_macs or count
        base_rate = base_rate or point["images_per_s"]
        gflops = 6 * count * point["images_per_s"] / 1e9
        lines.append(
            f"| {model} | {count / 1e6:,.1f} M | {count / base_macs:,.0f}x | "
            f"{point['images_per_s']:,.0f} | {base_rate / point['images_per_s']:,.0f}x | "
            f"{gflops:,.0f} |"
        )
    return [*lines, ""]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128, 224])
    parser.add_argument("--size", type=int, default=64, help="resolution of the batch sweep")
    parser.add_argument("--batch", type=int, default=32, help="batch of the resolution sweep")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        model, batch, size, precision = args.child
        print(json.dumps(child(model, int(batch), int(size), precision)))
        return
    import torch

    batches = sorted(set(args.batches) | {args.batch})
    by_batch = {
        m: {b: measure(m, b, args.size, args.precision) for b in batches} for m in args.models
    }
    by_size = {
        m: {
            s: by_batch[m][args.batch]
            if s == args.size
            else measure(m, args.batch, s, args.precision)
            for s in args.sizes
        }
        for m in args.models
    }
    lines = [
        f"- Command: `python benchmarks/scaling.py {shlex.join(sys.argv[1:])}`".replace(" `", " `"),
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; precision {args.precision}, channels-last",
        f"- Date: {datetime.date.today().isoformat()}",
        "- Each cell: training images/s, and the step's peak memory (resident high-water mark "
        "over the resident size before the first step)",
        "",
    ]
    lines += sweep_table(f"Batch size at {args.size}x{args.size}:", "batch", batches, by_batch)
    lines += sweep_table(f"Resolution at batch {args.batch}:", "size", args.sizes, by_size)
    lines += growth_table(args, by_batch)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
