"""Stopping and continuing: exact resume (also mid-epoch), non-finite losses, early stopping.
Signals to real processes are tests/reliability/test_signals.py's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.train.stopping import Interrupted
from cnnlab.train.trainer import Trainer
from trainer_helpers import (
    after_setup,
    assert_same_tensors,
    checkpoint_weights,
    make_config,
    read_metrics,
    stop_after,
    train,
    weights,
    without_timing,
)

# ---- resume equals uninterrupted ----------------------------------------------------------------

# dropout, BatchNorm, random crops and flips, momentum, a cosine schedule and clipping: every
# piece of state a resume has to bring back
RESUMABLE = dict(
    model="densenet_d2l",
    model_options={"growth_rate": 4, "convs_per_block": 1, "drop_rate": 0.2},
    resize=32,
    augment="crop,flip",
    label_smoothing=0.1,
    val_split=0.2,
    epochs=2,
    optimizer="momentum",
    schedule="cosine",
    clip_grad_norm=1.0,
    deterministic=True,
)


@pytest.fixture(scope="module")
def uninterrupted(shared_data, tmp_path_factory) -> tuple[Path, int]:
    """A run of RESUMABLE straight through; its folder and steps per epoch."""
    run = tmp_path_factory.mktemp("straight") / "run"
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # as in the tests that resume, so the arithmetic is the same
    try:
        trainer, _ = train(make_config(shared_data, run, **RESUMABLE))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return run, len(trainer.train_loader)


@pytest.mark.parametrize("stop", ["mid-epoch-1", "last-step-of-epoch-1", "mid-epoch-2", "crash"])
def test_resume_equals_uninterrupted(stop, uninterrupted, shared_data, tmp_path):
    straight, steps = uninterrupted
    run = tmp_path / "run"
    first = Trainer(make_config(shared_data, run, **RESUMABLE), echo=lambda line: None)
    if stop == "crash":  # killed outright right after epoch 1's checkpoint was written

        def crash(line):
            raise RuntimeError("killed")

        first.echo = crash
        with pytest.raises(RuntimeError, match="killed"):
            first.fit()
    else:
        at = {"mid-epoch-1": 2, "last-step-of-epoch-1": steps, "mid-epoch-2": steps + 3}[stop]
        stop_after(first, at)
        with pytest.raises(Interrupted) as stopped:
            first.fit()
        epoch, step = divmod(at - 1, steps)
        assert stopped.value.exit_code == 130
        assert f"epoch {epoch + 1}, step {step + 1}" in str(stopped.value)
        assert f"--resume {run}" in str(stopped.value)
    assert not (run / "model.safetensors").exists()

    lines: list[str] = []
    Trainer.resume(run, echo=lines.append).fit()
    assert lines[0].startswith(f"resuming {run} at epoch")
    assert_same_tensors(weights(run / "model.safetensors"), weights(straight / "model.safetensors"))
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(straight))
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation == json.loads((straight / "evaluation.json").read_text())


# ---- stopping -----------------------------------------------------------------------------------


def test_non_finite_loss_stops_naming_epoch_and_step(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run", epochs=2)  # 8 steps per epoch
    trainer = Trainer(config, echo=lambda line: None)

    def poison(trainer):
        criterion, calls = trainer.criterion, [0]

        def criterion_turning_nan(logits, labels):
            calls[0] += 1
            loss = criterion(logits, labels)
            return loss * math.nan if calls[0] >= 11 else loss

        trainer.criterion = criterion_turning_nan

    after_setup(trainer, poison)
    with pytest.raises(CnnlabError, match=r"NaN or infinite at epoch 2, step 3") as error:
        trainer.fit()
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert str(last) in str(error.value)
    assert all(torch.isfinite(v).all() for v in checkpoint_weights(last).values())
    assert len(read_metrics(tmp_path / "run")) == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_diverging_first_epoch_has_no_checkpoint_to_keep(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run", lr=1e38)
    with pytest.raises(CnnlabError, match=r"epoch 1, step \d+.*no epoch finished"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_early_stopping_restores_the_best_weights(fake_data, tmp_path):
    """Validation losses 1.0, 0.5, 0.7, 0.9 with patience 2: stop after epoch 4, keep epoch 2."""
    run = tmp_path / "run"
    config = make_config(fake_data, run, epochs=6, val_split=0.2, early_stopping=2)
    scripted = [1.0, 0.5, 0.7, 0.9, 1.1, 1.3]

    def script_val_losses(trainer):
        evaluate_ = trainer.evaluate

        def scripted_evaluate(data):
            result = evaluate_(data)
            if data is trainer.data.val:
                result.loss = scripted.pop(0)
            return result

        trainer.evaluate = scripted_evaluate

    _trainer, lines = train(config, script_val_losses)
    assert [r["val_loss"] for r in read_metrics(run)] == [1.0, 0.5, 0.7, 0.9]
    assert any(line.startswith("early stopping") for line in lines)
    assert "epochs run: 4 of 6" in (run / "summary.txt").read_text()
    final = weights(run / "model.safetensors")
    assert_same_tensors(final, checkpoint_weights(run / "checkpoints" / "best.safetensors"))
    last = checkpoint_weights(run / "checkpoints" / "last.safetensors")
    assert not torch.equal(final["fc.weight"], last["fc.weight"])


def test_early_stopping_when_nothing_can_improve(fake_data, tmp_path):
    # a learning rate too small to move any weight: the validation loss stays flat
    config = make_config(
        fake_data, tmp_path / "run", epochs=5, lr=1e-30, val_split=0.2, early_stopping=1
    )
    _trainer, lines = train(config)
    records = read_metrics(tmp_path / "run")
    assert len(records) == 2 and records[0]["val_loss"] == records[1]["val_loss"]
    assert any(line.startswith("early stopping: no better val_loss") for line in lines)


# ---- train and eval modes -----------------------------------------------------------------------
