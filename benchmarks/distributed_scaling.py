"""Benchmark: training images/s of `cnnlab train` in one process against several under torchrun
(DistributedDataParallel; issue 9).

Each layout "PxT" is P processes with T math threads each (`--threads T`; under torchrun, P > 1,
started by `python -m torch.distributed.run --nproc-per-node P` on 127.0.0.1), training the
same model on the same global batch for a few epochs on a subset of the real Fashion-MNIST
(the first --images training images, written as IDX files to a temporary folder), in fp32 and
contiguous memory so that every layout does the same arithmetic (no measured fast path), with
--precise-bn 0 and --quiet. The figure is the trainer's own `images_per_s` (all ranks' images
over the epoch's training time, evaluation excluded) from metrics.jsonl, the median over the
epochs after the first (warm-up) and over --rounds rounds; layouts take turns in each round, so
a burst of load elsewhere hits them all. The ratio compares each layout with the first.

On a CPU machine the default layouts put the same 2 cores to work two ways, 1x2 (one process,
two threads) and 2x1 (two processes of one thread, Gloo), beside 1x1 (one core's worth);
BatchNorm models also run each multi-process layout with --sync-bn. On GPUs (--device cuda)
each process drives its own GPU: give --layouts 1x1 2x1 4x1 8x1 for 1 to 8 GPUs.

Run: CNNLAB_DATA=../shared/data python benchmarks/distributed_scaling.py
     [--models lenet_bn resnet18] [--layouts 1x2 2x1 1x1] [--images N] [--batch-size B]
     [--epochs E] [--rounds R] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine import describe
from torch import nn

from cnnlab.data import load_dataset
from cnnlab.models import create_model

# model: (input size, global batch, training images): about 10-30 s of training per epoch on the
# 2-core development machine
SETTINGS = {
    "lenet_bn": (28, 256, 12288),
    "lenet": (28, 256, 12288),
    "resnet18": (32, 128, 2048),
}
TEST_IMAGES = 1000


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def write_subset(source: str, root: Path, images: int) -> Path:
    """The first `images` training and TEST_IMAGES test images of Fashion-MNIST under `root`."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    for split, prefix, count in (("train", "train", images), ("test", "t10k", TEST_IMAGES)):
        data = load_dataset("fashion-mnist", split, root=source, progress=False)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", data.images[:count, 0].numpy())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", data.labels[:count].numpy())
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command(layout: str, flags: list[str]) -> list[str]:
    processes, threads = (int(part) for part in layout.split("x"))
    train = ["-m", "cnnlab", "train", *flags, "--threads", str(threads)]
    if processes == 1:
        return [sys.executable, *train]
    launch = ["--nproc-per-node", str(processes), "--master-addr", "127.0.0.1"]
    launch += ["--master-port", str(free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *launch, *train]


def measure(model: str, layout: str, sync_bn: bool, data: Path, out: Path, args) -> list[float]:
    """images/s of each epoch after the first, in a fresh run."""
    size, batch = SETTINGS[model][0], args.batch_size or SETTINGS[model][1]
    flags = [
        *("--model", model, "--resize", str(size), "--batch-size", str(batch)),
        *("--epochs", str(args.epochs), "--precision", "fp32", "--memory-format", "contiguous"),
        *("--precise-bn", "0", "--device", args.device, "--quiet"),
        *("--data-dir", str(data), "--out", str(out)),
        *(["--sync-bn"] if sync_bn else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": layout.split("x")[1]}
    done = subprocess.run(command(layout, flags), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} {layout} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record["images_per_s"] for record in records[1:]]


def has_batchnorm(model: str) -> bool:
    built = create_model(model, num_classes=10, in_channels=1)
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in built.modules())


def variants(models: list[str], layouts: list[str]) -> list[tuple[str, str, bool]]:
    """(model, layout, sync_bn) to measure; BatchNorm models also with --sync-bn."""
    rows = []
    for model in models:
        rows += [(model, layout, False) for layout in layouts]
        if has_batchnorm(model):
            rows += [(model, layout, True) for layout in layouts if int(layout.split("x")[0]) > 1]
    return rows


def table(results: dict, rows: list[tuple[str, str, bool]], batch_size: int | None = None) -> str:
    lines = [
        "| model | input | global batch | layout (processes x threads) | images/s | vs first |",
        "|---|---|---:|---|---:|---:|",
    ]
    for model, layout, sync_bn in rows:
        size, batch = SETTINGS[model][0], batch_size or SETTINGS[model][1]
        rate = statistics.median(results[(model, layout, sync_bn)])
        first = statistics.median(results[next(r for r in rows if r[0] == model)])
        name = f"{layout}{' --sync-bn' if sync_bn else ''}"
        lines.append(
            f"| {model} | {size}x{size} | {batch} | {name} | {rate:,.0f} | {rate / first:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet_bn", "resnet18"])
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "1x1"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, help="training images (default: per model)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: per model)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_DATA"))
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("set CNNLAB_DATA or give --data-dir: the folder holding fashion-mnist/")
    rows = variants(args.models, args.layouts)
    results: dict = {row: [] for row in rows}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = {
            model: write_subset(args.data_dir, scratch / model, args.images or SETTINGS[model][2])
            for model in args.models
        }
        for round_number in range(args.rounds):
            for index, row in enumerate(rows):
                out = scratch / f"run-{round_number}-{index}"
                results[row] += measure(*row, data[row[0]], out, args)
                print(f"round {round_number + 1}: {row} {results[row][-1]:,.0f} img/s", flush=True)
    print(f"\n{describe(torch.device(args.device))}")
    print(f"command: {shlex.join(['python', *sys.argv])}")
    images = {model: args.images or SETTINGS[model][2] for model in args.models}
    print(f"training images: {images}; epochs {args.epochs} (first excluded); rounds {args.rounds}")
    print(table(results, rows, args.batch_size))


if __name__ == "__main__":
    main()
