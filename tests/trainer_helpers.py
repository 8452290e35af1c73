"""Helpers shared by the trainer tests (test_trainer.py, test_resume.py)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.runs.config import TrainConfig
from cnnlab.runs.weights import read_weights
from cnnlab.train.trainer import Trainer

TIMING_KEYS = ("seconds", "images_per_s")
EPOCH_KEYS = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", *TIMING_KEYS}


def make_config(data_root, out, **overrides) -> TrainConfig:
    values = dict(
        model="lenet",
        data_dir=str(data_root),
        out=str(out),
        epochs=1,
        batch_size=16,
        lr=0.1,
        device="cpu",
        quiet=True,
    )
    return TrainConfig(**{**values, **overrides})


def train(config: TrainConfig, on_setup=None) -> tuple[Trainer, list[str]]:
    """Fit a trainer, calling `on_setup(trainer)` once it is set up; the trainer and the lines
    it echoed after the report of the fast-path measurement (tested in test_speed_features)."""
    lines: list[str] = []
    trainer = Trainer(config, echo=lines.append)
    if on_setup is not None:
        after_setup(trainer, on_setup)
    trainer.fit()
    return trainer, [line for line in lines if not line.startswith(("fastest step:", "step: "))]


def after_setup(trainer: Trainer, action) -> None:
    """Call `action(trainer)` right after fit() has built the model, loaders and loss."""
    setup = trainer.setup

    def patched(*args, **kwargs):
        setup(*args, **kwargs)
        action(trainer)

    trainer.setup = patched


def stop_after(trainer: Trainer, steps: int, signum: int = signal.SIGINT) -> None:
    """Act as if `signum` arrived during training step number `steps` (counted over epochs)."""
    step, done = trainer.step, [0]

    def counting(*args):
        result = step(*args)
        done[0] += 1
        if done[0] == steps:
            trainer.stop_signal = signum
        return result

    trainer.step = counting


def record_losses(trainer: Trainer) -> list[float]:
    """The criterion's results, one per call, recorded from the moment the trainer is set up."""
    calls: list[float] = []

    def wrap(trainer):
        criterion = trainer.criterion

        def recording(logits, labels):
            loss = criterion(logits, labels)
            calls.append(loss.detach().clone())
            return loss

        trainer.criterion = recording

    after_setup(trainer, wrap)
    return calls


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_weights(path)[0]


def checkpoint_weights(path: Path, model: str = "lenet", **options) -> dict[str, torch.Tensor]:
    fresh = create_model(model, num_classes=10, in_channels=1, **options)
    load_checkpoint(path, fresh)
    return {k: v.clone() for k, v in fresh.state_dict().items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- the run folder ----------------------------------------------------------------------------
