"""Real run folders for the report tests (test_compare_runs.py, test_html_report_browser.py):
tiny one- and two-epoch runs on the fake Fashion-MNIST, and an unfinished copy of one."""

from __future__ import annotations

import shutil
from pathlib import Path

from cnnlab.cli import main

# What a run writes only once its epochs are done: without them it reads as cut short.
FINAL_FILES = ("evaluation.json", "summary.txt", "model.safetensors", "confusion.png")


def train_run(data: Path, out: Path, model: str, epochs: int) -> Path:
    argv = ["train", "--model", model, "--data-dir", str(data), "--out", str(out)]
    argv += ["--epochs", str(epochs), "--batch-size", "16", "--val-split", "0.25"]
    argv += ["--device", "cpu", "--quiet", "--threads", "1", "--precise-bn", "0"]
    assert main(argv) == 0
    return out


def unfinished_copy(run: Path, out: Path, epochs_kept: int) -> Path:
    """`run` as if killed during its epoch `epochs_kept + 1`: its checkpoints kept, the final
    files gone, metrics.jsonl holding the epochs before."""
    shutil.copytree(run, out)
    for name in FINAL_FILES:
        (out / name).unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:epochs_kept]))
    return out


def make_runs(data: Path, root: Path) -> dict[str, Path]:
    """Three runs by name: "lenet" (1 epoch), "lenet_bn" (2 epochs), "cut" (lenet_bn stopped
    after its first epoch)."""
    lenet = train_run(data, root / "lenet", "lenet", 1)
    lenet_bn = train_run(data, root / "lenet_bn", "lenet_bn", 2)
    return {"lenet": lenet, "lenet_bn": lenet_bn, "cut": unfinished_copy(lenet_bn, root / "cut", 1)}
