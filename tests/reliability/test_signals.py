"""SIGINT and SIGTERM: real signals, to real `cnnlab train` processes and to this one.

Mid-epoch, a signal ends the run after the current step with one atomic checkpoint and exit code
130 (SIGINT) or 143 (SIGTERM); a second Ctrl-C or a SIGTERM while that checkpoint is written
changes nothing; the resumed run ends with the same bits as one never stopped. A signal after
an epoch's last step stops at that epoch's checkpoint (also after the last epoch, and at the
epoch that triggers early stopping); Ctrl-C while setting up or writing the final report exits
with 130 and one line, no traceback, leaving the run resumable.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cnnlab.cli import main
from cnnlab.train import Interrupted, TrainConfig, Trainer
from training_processes import (
    SIGNALLED_WHILE_SAVING_TRAIN,
    STEPS,
    TrainProcess,
    assert_resumes_like,
    epoch_records,
    parity_flags,
    position,
    straight_run,
    tensor_hashes,
)


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> tuple[Path, Path]:
    """The data and the uninterrupted run's folder (see training_processes.py)."""
    return straight_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def global_flags():
    """Put back the process-wide settings that a deterministic run changes."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


# ---- real processes, stopped mid-epoch ---------------------------------------------------------


def test_ctrl_c_mid_epoch_and_again_while_saving(parity, tmp_path):
    """Ctrl-C in epoch 1, then Ctrl-C and SIGTERM again while the final checkpoint is being
    written (sent by the process to itself between the write of the temp file and the
    rename): exit 130, the checkpoint whole, the resumed run bit-identical."""
    data, straight = parity
    run = tmp_path / "run"
    process = TrainProcess(parity_flags(data, run), command=SIGNALLED_WHILE_SAVING_TRAIN)
    process.wait_for("epoch 1/2 [")
    process.signal(signal.SIGINT)
    assert process.finish() == 130, process.stderr
    assert process.stderr.count("stopping after this step") == 1
    assert process.stderr.count("already stopping") == 2
    last_line = process.last_line
    epoch, step = position(run)
    assert epoch == 0 and 0 < step < STEPS
    assert last_line.startswith(f"cnnlab train: SIGINT: stopped at epoch 1, step {step};")
    assert f"--resume {run}" in last_line
    assert_resumes_like(run, straight)


def test_sigterm_mid_epoch_then_ctrl_c(parity, tmp_path):
    """SIGTERM in epoch 2, then an impatient Ctrl-C: the first signal decides (143)."""
    data, straight = parity
    run = tmp_path / "run"
    process = TrainProcess(parity_flags(data, run))
    process.wait_for("epoch 2/2 [")
    process.signal(signal.SIGTERM)
    process.wait_for("stopping after this step")
    process.signal(signal.SIGINT)
    assert process.finish() == 143, process.stderr
    epoch, step = position(run)
    assert epoch == 1 and 0 < step < STEPS
    last_line = process.last_line
    assert last_line.startswith(f"cnnlab train: SIGTERM: stopped at epoch 2, step {step};")
    assert f"--resume {run}" in last_line
    assert_resumes_like(run, straight)


# ---- this process, signalled at chosen moments -------------------------------------------------


def config(data: Path, run: Path, **overrides) -> TrainConfig:
    values = dict(
        model="lenet",
        data_dir=str(data),
        out=str(run),
        epochs=2,
        batch_size=16,
        lr=0.05,
        val_split=0.2,
        device="cpu",
        quiet=True,
        deterministic=True,
    )
    return TrainConfig(**{**values, **overrides})


def signal_during(trainer: Trainer, method: str, signum: int, when=lambda *args: True) -> None:
    """Send `signum` to this process as `trainer.<method>` starts, when `when(*args)`."""
    original = getattr(trainer, method)

    def signalled(*args):
        if when(*args):
            os.kill(os.getpid(), signum)
        return original(*args)

    setattr(trainer, method, signalled)


def weights_of_checkpoint(path: Path) -> dict[str, str]:
    """The hashes of the model's tensors in a checkpoint, named as in model.safetensors."""
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in tensor_hashes(path).items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def in_process_straight(shared_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("in-process") / "run"
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(config(shared_data, run), echo=lambda line: None).fit()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return run


@pytest.mark.parametrize(
    "signum, epoch",
    [(signal.SIGINT, 0), (signal.SIGTERM, 1)],
    ids=["SIGINT-after-epoch-1", "SIGTERM-after-the-last-epoch"],
)
def test_signal_after_the_last_step_stops_at_the_epoch(
    signum, epoch, in_process_straight, shared_data, tmp_path
):
    """Arriving while an epoch is evaluated and saved: stop there, not one step into the next
    epoch, and after the last epoch not by finishing the run as if nothing had come."""
    run = tmp_path / "run"
    trainer = Trainer(config(shared_data, run), echo=lambda line: None)
    signal_during(trainer, "end_epoch", signum, lambda done, record: done == epoch)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 128 + signum
    assert str(stopped.value).startswith(f"{signum.name}: stopped after epoch {epoch + 1};")
    assert position(run) == (epoch + 1, 0)
    assert not (run / "model.safetensors").exists()

    Trainer.resume(run, echo=lambda line: None).fit()
    assert epoch_records(run) == epoch_records(in_process_straight)
    assert tensor_hashes(run / "model.safetensors") == tensor_hashes(
        in_process_straight / "model.safetensors"
    )


def test_stop_at_the_early_stopping_epoch_resumes_to_the_report(shared_data, tmp_path):
    """Validation losses 1.0, 0.5, 0.7, 0.9 with patience 2 end the run after epoch 4 with
    epoch 2's weights; a signal during epoch 4's evaluation stops it there, and the resume
    writes the report from epoch 2's weights instead of training epochs 5 and 6."""
    run = tmp_path / "run"
    settings = config(shared_data, run, epochs=6, early_stopping=2)
    trainer = Trainer(settings, echo=lambda line: None)
    scripted, evaluate = [1.0, 0.5, 0.7, 0.9], trainer.evaluate

    def scripted_evaluate(split):
        result = evaluate(split)
        if split is trainer.data.val:
            result.loss = scripted.pop(0)
        return result

    trainer.evaluate = scripted_evaluate
    signal_during(trainer, "end_epoch", signal.SIGINT, lambda done, record: done == 3)
    with pytest.raises(Interrupted, match="stopped after epoch 4;"):
        trainer.fit()

    lines: list[str] = []
    Trainer.resume(run, echo=lines.append).fit()
    assert any(line.startswith("early stopping: no better val_loss for 2") for line in lines)
    assert [record["val_loss"] for record in epoch_records(run)] == [1.0, 0.5, 0.7, 0.9]
    assert "epochs run: 4 of 6" in (run / "summary.txt").read_text()
    best = weights_of_checkpoint(run / "checkpoints" / "best.safetensors")
    assert tensor_hashes(run / "model.safetensors") == best


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", ["setup", "finish"])
def test_a_signal_outside_the_epochs_is_one_line(
    stage, signum, shared_data, tmp_path, capsys, monkeypatch
):
    """Setting up or writing the report, SIGINT and SIGTERM end `cnnlab train` at once with
    130 or 143 and one line saying what can be resumed, not a traceback or a silent death."""
    run = tmp_path / "run"
    flags = ["train", "--model", "lenet", "--epochs", "1", "--batch-size", "32", "--quiet"]
    flags += ["--device", "cpu", "--memory-format", "contiguous"]
    flags += ["--data-dir", str(shared_data), "--out", str(run)]
    original = getattr(Trainer, stage)

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, stage, signalled)
    assert main(flags) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cnnlab train: {signum.name}: stopped while ")
    monkeypatch.undo()
    if stage == "setup":
        assert err[0].endswith("before the run folder was created; nothing to resume")
        assert not run.exists()
        return
    assert "writing the final evaluation and report" in err[0]
    assert err[0].endswith(f"continue with: cnnlab train --resume {run}")
    assert not (run / "model.safetensors").exists()
    assert main(["train", "--resume", str(run)]) == 0
    with safe_open(run / "model.safetensors", framework="pt") as weights:
        assert weights.metadata()["cnnlab"]


def test_a_signal_after_the_run_folder_exists_says_nothing_to_resume(
    shared_data, tmp_path, capsys, monkeypatch
):
    """Stopped in set-up after the run folder was made but before any checkpoint: it says so."""
    run = tmp_path / "run"
    flags = ["train", "--model", "lenet", "--epochs", "1", "--batch-size", "32", "--quiet"]
    flags += ["--device", "cpu", "--data-dir", str(shared_data), "--out", str(run)]
    original = Trainer.mark

    def signalled(self, stage):
        if stage == "training_started":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, stage)

    monkeypatch.setattr(Trainer, "mark", signalled)
    assert main(flags) == 143
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"{run} has no checkpoint yet, nothing to resume: remove it or choose "
        "another --out to start again"
    )
    assert (run / "config.toml").is_file()
