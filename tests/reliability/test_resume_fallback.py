"""Resuming past an unusable checkpoint, with real run folders and a real `cnnlab train`.

A run keeps `checkpoints/previous.safetensors` (the `last` before the newest one). A resume whose
`last` is corrupted, truncated or missing warns naming the file and continues from `previous`
(else from `best`), and ends with exactly the weights of the run that was never damaged; when no
checkpoint can be loaded the error names each file and why. The corrupted `last` is never kept
as `previous`, and temp files left by killed writers are removed on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.runs.config import TrainConfig
from cnnlab.runs.folder import RunFolder
from cnnlab.runs.weights import read_weights, save_weights
from cnnlab.train.trainer import Trainer
from training_processes import run_cnnlab

TIMING_KEYS = ("seconds", "images_per_s")
FINAL_FILES = ("model.safetensors", "evaluation.json", "summary.txt", "curves.png")


@pytest.fixture(scope="module")
def straight(shared_data, tmp_path_factory) -> Path:
    """A deterministic 3-epoch LeNet run that nothing interrupted or damaged."""
    run = tmp_path_factory.mktemp("straight") / "run"
    config = TrainConfig(
        model="lenet",
        data_dir=str(shared_data),
        out=str(run),
        epochs=3,
        batch_size=16,
        lr=0.05,
        device="cpu",
        quiet=True,
        deterministic=True,
        memory_format="contiguous",
        threads=1,
    )
    with torch_flags_kept():
        Trainer(config, echo=lambda line: None).fit()
    return run


class torch_flags_kept:
    """Put back the process-wide settings that a deterministic one-thread run changes."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        if torch.are_deterministic_algorithms_enabled() != self.deterministic:
            torch.use_deterministic_algorithms(self.deterministic)


def damaged_copy(straight: Path, into: Path) -> RunFolder:
    """The straight run as it was when its last checkpoint had been written: without the files
    of the final report, which the resume has to write again."""
    run = into / "run"
    shutil.copytree(straight, run)
    for name in FINAL_FILES:
        (run / name).unlink()
    return RunFolder(run)


def saved_epoch(path: Path) -> int:
    """Load a checkpoint of the LeNet run; the epoch it was written after."""
    model = create_model("lenet", num_classes=10, in_channels=1)
    return load_checkpoint(path, model).state["epoch"]


def assert_same_result(run: Path, straight: Path) -> None:
    """Bit-identical final weights, and the same epochs with the same numbers."""
    ours = read_weights(run / "model.safetensors")[0]
    theirs = read_weights(straight / "model.safetensors")[0]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert records(run) == records(straight)


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def dead_pid() -> int:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)


def cnnlab_resume(run: Path) -> subprocess.CompletedProcess:
    return run_cnnlab("train", "--resume", str(run))


def test_a_truncated_last_is_skipped_with_a_warning_and_previous_used(straight, tmp_path):
    run = damaged_copy(straight, tmp_path)
    assert (saved_epoch(run.last), saved_epoch(run.previous)) == (3, 2)
    whole = run.last.read_bytes()
    run.last.write_bytes(whole[: len(whole) // 2])  # a copy or a disk that stopped halfway
    pid = dead_pid()
    debris = [
        run.path / "checkpoints" / f".last.safetensors.{pid}.abcd1234.tmp",
        run.path / "checkpoints" / f".previous.safetensors.{pid}.efgh5678.tmp",
        run.path / f".metrics.jsonl.{pid}.ijkl9012.tmp",
    ]
    live = run.path / "checkpoints" / f".best.safetensors.{os.getpid()}.mnop3456.tmp"
    for path in [*debris, live]:
        path.write_bytes(whole[:1000])

    result = cnnlab_resume(run.path)

    assert result.returncode == 0, result.stderr
    assert f"warning: cannot resume from last.safetensors: {run.last}" in result.stderr
    assert f"warning: resuming from {run.previous} instead" in result.stderr
    assert f"resuming {run.path} at epoch 3, step 0 from previous.safetensors" in result.stdout
    assert_same_result(run.path, straight)
    # the damaged `last` was replaced, not kept as `previous`; the kills' debris is gone, the
    # temp file of a writer that still runs (this process) is not
    assert (saved_epoch(run.last), saved_epoch(run.previous)) == (3, 2)
    assert not any(path.exists() for path in debris) and live.exists()


def write_garbage(run: RunFolder, kind: str) -> None:
    whole = run.last.read_bytes()
    if kind == "empty":
        run.last.write_bytes(b"")
    elif kind == "cut-in-header":
        run.last.write_bytes(whole[:100])
    elif kind == "random-bytes":
        run.last.write_bytes(os.urandom(len(whole)))
    elif kind == "weights-not-checkpoint":
        model = create_model("lenet", num_classes=10, in_channels=1)
        save_weights(run.last, model, {"model": "lenet", "num_classes": 10, "in_channels": 1})
    elif kind == "missing":
        run.last.unlink()
    elif kind == "flipped-bit":  # in the tensor data: still a valid file, but other weights
        data = bytearray(whole)
        data[len(data) - 1000] ^= 0x04
        run.last.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "kind",
    ["empty", "cut-in-header", "random-bytes", "weights-not-checkpoint", "missing", "flipped-bit"],
)
def test_each_kind_of_unusable_last_falls_back_to_previous(kind, straight, tmp_path, capsys):
    run = damaged_copy(straight, tmp_path)
    write_garbage(run, kind)
    lines = []
    with torch_flags_kept():
        Trainer.resume(run.path, echo=lines.append).fit()
    warnings = capsys.readouterr().err
    assert f"warning: cannot resume from last.safetensors: {run.last}" in warnings
    assert f"warning: resuming from {run.previous} instead" in warnings
    assert lines[0] == f"resuming {run.path} at epoch 3, step 0 from previous.safetensors"
    assert_same_result(run.path, straight)


def test_best_is_the_last_resort(straight, tmp_path, capsys):
    run = damaged_copy(straight, tmp_path)
    run.last.write_bytes(b"")
    run.previous.write_bytes(os.urandom(5000))
    best = saved_epoch(run.best)
    lines = []
    with torch_flags_kept():
        Trainer.resume(run.path, echo=lines.append).fit()
    warnings = capsys.readouterr().err
    assert f"from last.safetensors: {run.last}" in warnings
    assert f"from previous.safetensors: {run.previous}" in warnings
    assert f"warning: resuming from {run.best} instead" in warnings
    assert lines[0] == f"resuming {run.path} at epoch {best + 1}, step 0 from best.safetensors"
    assert_same_result(run.path, straight)


def test_no_loadable_checkpoint_is_one_clear_error_naming_each(straight, tmp_path):
    run = damaged_copy(straight, tmp_path)
    run.last.write_bytes(b"")
    run.previous.write_bytes(run.previous.read_bytes()[:300])
    run.best.write_bytes(b"\x80\x04K\x01.")  # a pickle
    result = cnnlab_resume(run.path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"cnnlab train: error: cannot resume {run.path}: none of its checkpoints can be loaded"
    )
    for path in (run.last, run.previous, run.best):
        assert str(path) in message
    assert not (run.path / "model.safetensors").exists()
