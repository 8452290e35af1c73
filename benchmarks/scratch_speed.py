"""Benchmark: a training step of the NumPy LeNets (cnnlab.scratch) against the same step in PyTorch.

One step = forward, softmax cross-entropy, backward, SGD-with-momentum update, on the same batch
of 256 real Fashion-MNIST training images (normalised), for each of the three scratch LeNets and
its PyTorch twin built from cnnlab's LeNet class:

    scratch_lenet                  <-> lenet         (sigmoid, average pooling)
    scratch_lenet(batch_norm=True) <-> lenet_bn      (the same with BatchNorm)
    scratch_lenet_modern           <-> LeNet with BatchNorm, ReLU and max pooling

Both sides run on the CPU with their libraries' default threads (OpenBLAS for NumPy, torch's
intra-op pool), in float32; the scratch step also in float64 for reference. The two are timed in
alternating rounds in one process, so a noisy machine slows both alike, and the ratio is
median(scratch step) / median(PyTorch step). The PyTorch step skips the input's gradient (the
input does not require grad), and so does the scratch one (`backward(..., input_grad=False)`).

Run: CNNLAB_DATA=../shared/data python benchmarks/scratch_speed.py [--rounds 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import numpy as np
import torch
from machine import describe
from torch import nn

from cnnlab.models.lenet import LeNet
from cnnlab.scratch.losses import softmax_cross_entropy
from cnnlab.scratch.network import load_torch_state, scratch_lenet, scratch_lenet_modern
from cnnlab.scratch.optim import SGD
from cnnlab.scratch.train import load_scratch_data, normalise

BATCH = 256
PAIRS = {  # name: (scratch builder, torch builder)
    "lenet": (
        lambda dtype: scratch_lenet(dtype=dtype),
        lambda: LeNet("lenet", 10, 1, nn.Sigmoid, nn.AvgPool2d, batch_norm=False),
    ),
    "lenet_bn": (
        lambda dtype: scratch_lenet(batch_norm=True, dtype=dtype),
        lambda: LeNet("lenet_bn", 10, 1, nn.Sigmoid, nn.AvgPool2d, batch_norm=True),
    ),
    "lenet_modern (BN, ReLU, max)": (
        lambda dtype: scratch_lenet_modern(dtype=dtype),
        lambda: LeNet("lenet_modern_bn", 10, 1, nn.ReLU, nn.MaxPool2d, batch_norm=True),
    ),
}


def scratch_step(model, optimizer, x, y) -> None:
    _, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits, input_grad=False)
    optimizer.step(model.gradients())


def torch_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def seconds_per_step(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure(name: str, x: np.ndarray, y: np.ndarray, rounds: int, steps: int) -> dict:
    build_scratch, build_torch = PAIRS[name]
    torch.manual_seed(0)
    tmodel = build_torch().train()
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loops = {"torch fp32": lambda: torch_step(tmodel, topt, xt, yt)}
    for dtype in (np.float32, np.float64):
        smodel = load_torch_state(build_scratch(dtype).train(), tmodel.state_dict())
        sopt = SGD(smodel.parameters(), lr=0.01, momentum=0.9)
        xs = x.astype(dtype)
        label = f"scratch {np.dtype(dtype).name.replace('float', 'fp')}"
        loops[label] = lambda m=smodel, o=sopt, xs=xs: scratch_step(m, o, xs, y)
    times = {label: [] for label in loops}
    for loop in loops.values():
        seconds_per_step(loop, 2)  # warm-up: caches, allocator, BLAS threads
    for _ in range(rounds):
        for label, loop in loops.items():
            times[label].append(seconds_per_step(loop, steps))
    medians = {label: statistics.median(t) * 1000 for label, t in times.items()}
    return {"model": name, **medians}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--steps", type=int, default=10, help="steps per round (default 10)")
    parser.add_argument("--models", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not os.environ.get("CNNLAB_DATA"):
        sys.exit("set CNNLAB_DATA to the folder holding fashion-mnist/ (e.g. ../shared/data)")
    data = load_scratch_data("fashion-mnist", download=False)
    x = normalise(data.train_images[:BATCH], data.mean, data.std, np.float32)
    y = data.train_labels[:BATCH].astype(np.int64)
    command = shlex.join(["python", *sys.argv])
    print(f"- Command: `CNNLAB_DATA={os.environ['CNNLAB_DATA']} {command}`")
    print(f"- Machine: {describe()}")
    print(f"- Date: {time.strftime('%Y-%m-%d')}")
    print(f"- Batch {BATCH} real Fashion-MNIST images; median of {args.rounds} alternating rounds")
    print(f"  of {args.steps} steps each, after 2 warm-up steps\n")
    print("| model | PyTorch fp32 ms/step | scratch fp32 ms/step | ratio | scratch fp64 ms/step |")
    print("|---|---:|---:|---:|---:|", flush=True)
    for name in args.models:
        r = measure(name, x, y, args.rounds, args.steps)
        ratio = r["scratch fp32"] / r["torch fp32"]
        print(
            f"| {name} | {r['torch fp32']:.1f} | {r['scratch fp32']:.1f} | {ratio:.2f}x "
            f"| {r['scratch fp64']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
