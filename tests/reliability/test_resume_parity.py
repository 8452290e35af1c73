"""Resume parity and determinism, with real `cnnlab train` processes on the CPU.

With --deterministic and the same seed, two runs give the same bits in every tensor of their
weights and checkpoints; a run killed after its first epoch and resumed with `cnnlab train
--resume` ends with the same per-epoch records, evaluation and weight bits as the run that was
never stopped (runs stopped mid-epoch by signals: test_signals.py). A checkpoint that belongs to
another model, class list or dataset than the run's config.toml is refused, naming both, unless
--allow-mismatch. (tests/train/test_resume.py checks parity in-process for a DenseNet with
dropout and BatchNorm, stopped at chosen steps.)
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.train import Trainer
from training_processes import (
    TrainProcess,
    assert_resumes_like,
    epoch_records,
    evaluation,
    parity_flags,
    position,
    straight_run,
    tensor_hashes,
    train,
)

FILES = ("model.safetensors", "checkpoints/last.safetensors", "checkpoints/best.safetensors")


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> tuple[Path, Path]:
    """The data and the uninterrupted run's folder."""
    return straight_run(tmp_path_factory)


@pytest.fixture(scope="module")
def data(parity) -> Path:
    return parity[0]


def test_same_seed_same_bits(parity, tmp_path):
    data, straight = parity
    again = tmp_path / "run"
    train(parity_flags(data, again))
    for name in FILES:  # the checkpoints: optimizer state and RNG states too
        assert tensor_hashes(again / name) == tensor_hashes(straight / name), name
    assert epoch_records(again) == epoch_records(straight)
    assert evaluation(again) == evaluation(straight)


def test_killed_after_epoch_1_resumes_to_the_same_bits(parity, tmp_path):
    """2E epochs straight versus E epochs, SIGKILL, resume: the same losses and weights."""
    data, straight = parity
    run = tmp_path / "run"
    process = TrainProcess(parity_flags(data, run))
    process.wait_for("epoch 2/2 [")  # the bar of epoch 2: epoch 1's checkpoint is written
    process.signal(signal.SIGKILL)
    assert process.finish() == -signal.SIGKILL
    assert position(run) == (1, 0)
    assert_resumes_like(run, straight)


def test_an_operation_without_a_deterministic_kernel_is_one_clear_error(
    shared_data, tmp_path, capsys, monkeypatch
):
    """As torch reports it on CUDA for adaptive average pooling's backward (no GPU here)."""
    message = (
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but "
        "you set 'torch.use_deterministic_algorithms(True)'."
    )

    def refusing_step(self, *args):
        raise RuntimeError(message)

    monkeypatch.setattr(Trainer, "step", refusing_step)
    flags = ["train", "--model", "lenet", "--epochs", "1", "--deterministic", "--quiet"]
    flags += ["--device", "cpu", "--data-dir", str(shared_data), "--out", str(tmp_path / "r")]
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        assert main(flags) == 2
    finally:
        torch.use_deterministic_algorithms(deterministic)
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cnnlab train: error: --deterministic: torch {torch.__version__} has no "
        "deterministic adaptive_avg_pool2d_backward_cuda for this model on cpu; train on "
        "--device cpu for bit-exact runs, or drop --deterministic"
    )


# ---- a checkpoint of another run ---------------------------------------------------------------


def set_config(run: Path, **values) -> None:
    """Rewrite settings in a run's config.toml."""
    lines = (run / "config.toml").read_text().splitlines()
    for key, value in values.items():
        lines = [
            f"{key} = {json.dumps(value)}" if line.startswith(f"{key} = ") else line
            for line in lines
        ]
    (run / "config.toml").write_text("\n".join(lines) + "\n")


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """28x28 grayscale PNGs in train/ and test/, one subfolder per class."""
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.new("L", (28, 28), 40 * label + index).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory) -> Path:
    """A finished one-epoch run whose config.toml was then changed to ask for two epochs."""
    run = tmp_path_factory.mktemp("one") / "run"
    flags = ["--model", "lenet", "--epochs", "1", "--batch-size", "32", "--quiet"]
    flags += ["--memory-format", "contiguous", "--device", "cpu"]
    assert main(["train", *flags, "--data-dir", str(data), "--out", str(run)]) == 0
    set_config(run, epochs=2)
    return run


@pytest.fixture
def epoch_one(one_epoch, tmp_path, capsys) -> Path:
    """A copy of `one_epoch` to resume."""
    capsys.readouterr()
    return shutil.copytree(one_epoch, tmp_path / "copy")


def resume(run: Path, *flags: str) -> int:
    return main(["train", "--resume", str(run), *flags])


def test_another_model_is_refused_naming_both(epoch_one, capsys):
    before = (epoch_one / "model.safetensors").read_bytes()
    set_config(epoch_one, model="lenet_bn")
    assert resume(epoch_one) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnnlab train: error: cannot resume {epoch_one}: ")
    assert "model 'lenet' in the checkpoint but 'lenet_bn' in" in err
    assert str(epoch_one / "checkpoints" / "last.safetensors") in err
    assert "--allow-mismatch" in err and len(err.splitlines()) == 1
    # overridden, the weights still have to fit: a clear error naming keys, no traceback
    assert resume(epoch_one, "--allow-mismatch") == 2
    assert "do not fit the model lenet_bn" in capsys.readouterr().err
    assert (epoch_one / "model.safetensors").read_bytes() == before


def test_another_class_count_is_refused(epoch_one, tmp_path, capsys):
    folder = write_image_folder(tmp_path / "three")
    set_config(epoch_one, dataset=str(folder))
    assert resume(epoch_one) == 2
    err = capsys.readouterr().err
    assert "classes 10 [T-shirt/top, Trouser, Pullover, Dress, ...] in the checkpoint" in err
    assert "but 3 [class0, class1, class2] in" in err
    assert resume(epoch_one, "--allow-mismatch") == 2  # a 10-class head cannot take 3 classes
    assert "fc.weight is (10, 84) in the file but (3, 84) in the model" in capsys.readouterr().err


def test_another_dataset_is_refused_unless_overridden(epoch_one, data, capsys):
    # MNIST with the same shapes: before the check, this resumed silently on the wrong data
    shutil.copytree(data / "fashion-mnist", data / "mnist", dirs_exist_ok=True)
    set_config(epoch_one, dataset="mnist")
    assert resume(epoch_one) == 2
    err = capsys.readouterr().err
    assert "dataset 'fashion-mnist' in the checkpoint but 'mnist' in" in err
    assert len(epoch_records(epoch_one)) == 1  # refused before any training

    assert resume(epoch_one, "--allow-mismatch") == 0
    out = capsys.readouterr().out
    assert out.startswith("warning: resuming") and "dataset 'fashion-mnist'" in out
    assert [record["epoch"] for record in epoch_records(epoch_one)] == [1, 2]


def test_allow_mismatch_needs_resume(capsys):
    assert main(["train", "--allow-mismatch"]) == 2
    assert "--allow-mismatch only applies with --resume RUN" in capsys.readouterr().err
