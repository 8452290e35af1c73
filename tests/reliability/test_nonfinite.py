"""NaN and infinite losses and gradients are caught before `optimizer.step()`.

The default policy stops the run with an error naming the epoch and step: the weights, the
optimiser's state and the schedule are exactly as the last good step left them, no checkpoint
is written from them and the previous one is untouched. `--nonfinite skip` skips such steps
instead, counts them in the epoch record and the summary, and still stops when skipping cannot
help (the weights themselves are no longer finite, or every step of an epoch was skipped).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError, NonFiniteError
from cnnlab.train import TrainConfig, Trainer
from cnnlab.train.failures import SKIP_LIMIT, NonFiniteStep
from training_processes import run_cnnlab

STEPS_PER_EPOCH = 8  # 120 fake training images in batches of 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(data, out, **overrides) -> TrainConfig:
    values = dict(
        model="lenet",
        data_dir=str(data),
        out=str(out),
        epochs=2,
        batch_size=16,
        lr=0.1,
        optimizer="momentum",
        schedule="cosine",
        device="cpu",
        quiet=True,
        precise_bn=0,
    )
    return TrainConfig(**{**values, **overrides})


def snapshot(trainer: Trainer) -> dict:
    """Everything a step changes: weights, optimiser state (momentum), schedule position."""
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    momenta = [
        trainer.optimizer.state[p]["momentum_buffer"].clone()
        for group in trainer.optimizer.param_groups
        for p in group["params"]
        if "momentum_buffer" in trainer.optimizer.state[p]
    ]
    return {"weights": weights, "momenta": momenta, "schedule": trainer.scheduler.last_epoch}


def assert_same(a: dict, b: dict) -> None:
    assert a["schedule"] == b["schedule"]
    assert a["weights"].keys() == b["weights"].keys()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    assert len(a["momenta"]) == len(b["momenta"])
    for x, y in zip(a["momenta"], b["momenta"], strict=True):
        assert torch.equal(x, y)


class Poison:
    """Makes chosen training steps (1-based, counted over the whole run) non-finite: a NaN
    loss, or (`what="gradients"`) a finite loss whose first layer's gradient is infinite.
    Records the trainer's state before every poisoned step."""

    def __init__(self, trainer: Trainer, steps: set[int], what: str = "loss"):
        self.trainer, self.steps, self.what = trainer, steps, what
        self.count, self.before = 0, {}
        setup = trainer.setup

        def patched(*args, **kwargs):
            setup(*args, **kwargs)
            self.install()

        trainer.setup = patched

    def install(self) -> None:
        trainer = self.trainer
        criterion = trainer.criterion
        if self.what == "gradients":
            first = next(trainer.model.parameters())
            first.register_hook(lambda grad: grad * math.inf if self.poisoned_now() else grad)

        def poisoned_criterion(logits, labels):
            self.count += 1
            if self.poisoned_now():
                self.before[self.count] = snapshot(trainer)
            loss = criterion(logits, labels)
            return loss * math.nan if self.poisoned_now() and self.what == "loss" else loss

        trainer.criterion = poisoned_criterion

    def poisoned_now(self) -> bool:
        return self.count in self.steps


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("what", ["loss", "gradients"])
def test_step_refuses_before_anything_changes(fake_data, tmp_path, what):
    """Trainer.step raises before the optimiser step: weights, momentum and schedule as before."""
    trainer = Trainer(config(fake_data, tmp_path / "run"), echo=lambda line: None)
    poison = Poison(trainer, {2}, what)
    trainer.setup(create_run=False)
    trainer.model.train()
    clipped = torch.zeros((), dtype=torch.int64)
    batches = iter(trainer.train_loader)
    trainer.step(*next(batches), clipped)  # a good step: there is momentum to keep
    with pytest.raises(NonFiniteStep) as error:
        trainer.step(*next(batches), clipped)
    assert error.value.what == what
    assert_same(snapshot(trainer), poison.before[2])


@pytest.mark.parametrize("what", ["loss", "gradients"])
def test_stop_names_epoch_and_step_and_keeps_the_last_checkpoint(fake_data, tmp_path, what):
    run = tmp_path / "run"
    trainer = Trainer(config(fake_data, run), echo=lambda line: None)
    last = run / "checkpoints" / "last.safetensors"
    poison = Poison(trainer, {STEPS_PER_EPOCH + 3}, what)  # epoch 2, step 3
    train_epoch, kept = trainer.train_epoch, {}

    def remembering(epoch, *args):  # the checkpoint epoch 1 wrote, as it was then
        if epoch == 1:
            kept["digest"] = digest(last)
        return train_epoch(epoch, *args)

    trainer.train_epoch = remembering
    with pytest.raises(NonFiniteError) as error:
        trainer.fit()
    message = str(error.value)
    assert f"training {what} became NaN or infinite at epoch 2, step 3" in message
    assert "the step was not applied" in message and str(last) in message
    assert "--nonfinite skip" in message
    assert_same(snapshot(trainer), poison.before[STEPS_PER_EPOCH + 3])
    assert digest(last) == kept["digest"]  # the previous checkpoint is intact
    assert not (run / "model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_skip_policy_skips_counts_and_reports(fake_data, tmp_path):
    run = tmp_path / "run"
    lines: list[str] = []
    trainer = Trainer(config(fake_data, run, nonfinite="skip"), echo=lines.append)
    bad = {3, 5, STEPS_PER_EPOCH + 6}
    poison = Poison(trainer, bad, "loss")
    gradients_too = Poison(trainer, {7}, "gradients")  # two poisons: each counts its own calls
    trainer.fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [3, 1]
    assert all(math.isfinite(r["train_loss"]) for r in records)
    assert "skipped 3 non-finite steps" in next(x for x in lines if x.startswith("epoch 1/2"))
    summary = (run / "summary.txt").read_text()
    assert "non-finite steps skipped (--nonfinite skip): 4" in summary
    # a skipped step leaves the weights alone but keeps the schedule in line with the batches
    assert trainer.scheduler.last_epoch == 2 * STEPS_PER_EPOCH
    assert set(poison.before) == bad and set(gradients_too.before) == {7}
    for weights in checkpoint_tensors(run / "model.safetensors"):
        assert torch.isfinite(weights).all()


def checkpoint_tensors(path: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return list(load_file(path).values())


def test_skip_policy_stops_after_too_many_in_a_row(fake_data, tmp_path):
    """Skipping leaves the weights as they are: when a whole epoch's worth of steps in a row
    (at most SKIP_LIMIT) are non-finite, it is the weights that fail; stop."""
    run = tmp_path / "run"
    trainer = Trainer(config(fake_data, run, nonfinite="skip"), echo=lambda line: None)
    Poison(trainer, set(range(2, 30)), "loss")  # all but the first step
    with pytest.raises(NonFiniteError) as error:
        trainer.fit()
    assert min(SKIP_LIMIT, STEPS_PER_EPOCH) == 8
    message = str(error.value)
    assert "8 steps in a row (the last at epoch 2, step 1) had a NaN or infinite" in message
    assert str(run / "checkpoints" / "last.safetensors") in message
    assert not (run / "model.safetensors").exists()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_weights_made_infinite_by_an_update_stop_the_run(fake_data, tmp_path, policy):
    """An update can overflow from a finite loss and gradients: the next step finds the
    weights themselves infinite; no skipping helps, so both policies stop there."""
    run = tmp_path / "run"
    trainer = Trainer(config(fake_data, run, nonfinite=policy), echo=lambda line: None)
    steps = [0]

    def overflow_third_update(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(math.inf)

    setup = trainer.setup

    def patched(*args, **kwargs):
        setup(*args, **kwargs)
        trainer.optimizer.register_step_post_hook(overflow_third_update)

    trainer.setup = patched
    with pytest.raises(NonFiniteError) as error:
        trainer.fit()
    message = str(error.value)
    assert "the weights became NaN or infinite before the step at epoch 1, step 4" in message
    assert "the last good checkpoint is none: no epoch finished" in message
    assert list((run / "checkpoints").iterdir()) == []


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_fp16_overflowing_gradients_are_the_scalers_to_skip(fake_data, tmp_path):
    """With fp16 loss scaling, infinite gradients are routine (the scale is too high): the
    GradScaler skips the step and lowers the scale; only a non-finite loss stops the run."""
    trainer = Trainer(config(fake_data, tmp_path / "run", precision="fp16"), echo=lambda line: None)
    poison = Poison(trainer, {1}, "gradients")
    trainer.setup(create_run=False)
    trainer.model.train()
    scale = trainer.scaler.get_scale()
    clipped = torch.zeros((), dtype=torch.int64)
    trainer.step(*next(iter(trainer.train_loader)), clipped)
    assert trainer.scaler.get_scale() < scale
    after = snapshot(trainer)
    before = poison.before[1]
    for key in before["weights"]:
        assert torch.equal(after["weights"][key], before["weights"][key]), key


def test_diverging_cli_run_exits_non_zero_without_a_checkpoint(fake_data, tmp_path):
    """A real `cnnlab train` whose learning rate makes it diverge at once."""
    run = tmp_path / "run"
    result = run_cnnlab(
        *("train", "--model", "lenet", "--lr", "1e38", "--epochs", "2", "--batch-size", "16"),
        *("--device", "cpu", "--threads", "1", "--quiet"),
        *("--data-dir", str(fake_data), "--out", str(run)),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "NaN or infinite" in result.stderr and "at epoch 1, step " in result.stderr
    assert "the last good checkpoint is none: no epoch finished" in result.stderr
    assert list((run / "checkpoints").iterdir()) == []
    assert not (run / "model.safetensors").exists()


def test_nonfinite_policy_is_validated():
    with pytest.raises(CnnlabError, match="--nonfinite must be one of stop, skip, got 'ignore'"):
        TrainConfig(nonfinite="ignore").resolved()
