"""The trainer end to end on a tiny fake Fashion-MNIST: the run folder, train/eval modes,
auxiliary losses, regularisers, transfer learning and the `cnnlab train` command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.cli import main
from cnnlab.data.splits import class_weights
from cnnlab.models import create_model
from cnnlab.runs.config import config_from, load_toml
from cnnlab.runs.weights import load_model
from cnnlab.train.evaluate import evaluate
from cnnlab.train.optim import l1_penalty
from cnnlab.train.setup import RunData, load_run_data
from cnnlab.train.trainer import Trainer
from trainer_helpers import (
    EPOCH_KEYS,
    after_setup,
    assert_same_tensors,
    checkpoint_weights,
    make_config,
    read_metrics,
    record_losses,
    state_copy,
    train,
    weights,
)


def test_run_folder_holds_everything(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run", epochs=2, val_split=0.2)
    trainer, lines = train(config)
    run = tmp_path / "run"

    assert config_from(load_toml(run / "config.toml")).resolved() == trainer.config
    assert trainer.config.batch_size == 16 and trainer.config.resize == 28

    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and records == trainer.history
    for record in records:
        assert record.keys() >= EPOCH_KEYS
        assert all(math.isfinite(record[key]) for key in EPOCH_KEYS)
        assert 0 <= record["train_acc"] <= 1 and 0 <= record["val_acc"] <= 1
    assert records[0]["lr"] == 0.1

    for picture in ("curves.png", "confusion.png"):
        assert (run / picture).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    evaluation = json.loads((run / "evaluation.json").read_text())
    classes = trainer.data.classes
    assert evaluation["split"] == "fashion-mnist/test" and evaluation["count"] == 40
    assert list(evaluation["per_class_acc"]) == classes and len(classes) == 10
    assert sum(map(sum, evaluation["confusion"])) == 40

    model, metadata = load_model(run / "model.safetensors")
    assert metadata["model"] == "lenet" and metadata["options"] == {}
    assert metadata["classes"] == classes and metadata["num_classes"] == 10
    assert metadata["image_size"] == [1, 28, 28] and metadata["input_size"] == 28
    assert_same_tensors(model.state_dict(), trainer.model.state_dict())
    for checkpoint in ("last", "best"):
        checkpoint_weights(run / "checkpoints" / f"{checkpoint}.safetensors")

    summary = (run / "summary.txt").read_text()
    assert "lenet on fashion-mnist" in summary and "epochs run: 2 of 2" in summary
    assert f"accuracy {evaluation['acc']:.4f}" in summary
    assert lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2")
    assert lines[-1] == f"test accuracy {evaluation['acc']:.4f}; run folder: {run}"


def test_training_steps_train_and_evaluation_evals(fake_data, tmp_path):
    options = {"growth_rate": 4, "convs_per_block": 1, "drop_rate": 0.2}
    config = make_config(
        fake_data,
        tmp_path / "run",
        model="densenet_d2l",
        model_options=options,
        resize=32,
        val_split=0.2,
        precise_bn=0,  # its statistics pass is tested in test_batchnorm.py
    )
    seen: list[tuple[bool, bool]] = []  # (gradients on, module in training mode)

    def watch(trainer):
        for module in trainer.model.modules():
            if isinstance(module, (nn.Dropout, nn.BatchNorm2d)):
                module.register_forward_pre_hook(
                    lambda m, args: seen.append((torch.is_grad_enabled(), m.training))
                )

    trainer, _ = train(config, watch)
    assert {mode for grad, mode in seen if grad} == {True}
    assert {mode for grad, mode in seen if not grad} == {False}
    steps = len(trainer.train_loader)
    for module in trainer.model.modules():
        if isinstance(module, nn.BatchNorm2d):  # counted in training steps only
            assert int(module.num_batches_tracked) == steps


def test_evaluate_keeps_modes_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("densenet_d2l", num_classes=10, in_channels=1, drop_rate=0.5,
                         growth_rate=4, convs_per_block=1)  # fmt: skip
    model.train()
    model.head.eval()  # a mixed state, which must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    before = state_copy(model)
    images, labels = torch.randn(12, 1, 32, 32), torch.arange(12) % 10
    batches = [(images[:6], labels[:6]), (images[6:], labels[6:])]

    results = [evaluate(model, batches, 10, torch.device("cpu")) for _ in range(2)]

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert_same_tensors(state_copy(model), before)
    assert results[0].loss == results[1].loss  # dropout was off
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(images), labels).item()
    assert results[0].loss == pytest.approx(expected, rel=1e-6)


# ---- auxiliary losses ---------------------------------------------------------------------------


def test_googlenet_auxiliary_losses_weighted_in_training_only(fake_data, tmp_path):
    config = make_config(
        fake_data,
        tmp_path / "run",
        model="googlenet",
        model_options={"aux_logits": True},
        resize=32,
        batch_size=4,
        aux_weight=0.25,
    )
    full = load_run_data(config.resolved(), progress=False)
    small = torch.arange(24)  # 4 steps of googlenet are plenty
    data = RunData(full.train.subset(small), None, full.test.subset(small[:8]), full.mean, full.std)
    lines: list[str] = []
    trainer = Trainer(config, echo=lines.append, data=data)
    calls = record_losses(trainer)
    step, step_losses = trainer.step, []

    def recording_step(*args):
        loss, logits = step(*args)
        step_losses.append(loss)
        return loss, logits

    trainer.step = recording_step
    outputs: list[object] = []

    def watch_outputs(trainer):
        trainer.model.register_forward_hook(lambda m, args, out: outputs.append(out))

    after_setup(trainer, watch_outputs)
    trainer.fit()

    steps = len(trainer.train_loader)
    assert steps == 6 and len(calls) == 3 * steps  # logits, aux1, aux2; none in evaluation
    for index, loss in enumerate(step_losses):
        main_loss, aux1, aux2 = calls[3 * index : 3 * index + 3]
        assert torch.equal(loss, main_loss + 0.25 * aux1 + 0.25 * aux2)
    assert all(isinstance(out, dict) for out in outputs[:steps])
    assert all(isinstance(out, torch.Tensor) for out in outputs[steps:]) and outputs[steps:]


# ---- regularisers, clipping, loss options ---------------------------------------------------


def test_weight_decay_and_l1_reach_optimizer_and_loss(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run", optimizer="adamw", weight_decay=0.05, l1=0.01)
    trainer = Trainer(config, echo=lambda line: None)
    calls = record_losses(trainer)
    trainer.setup(create_run=False)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.05
    images, labels = next(iter(trainer.train_loader))
    trainer.model.train()
    penalty = l1_penalty(trainer.model, 0.01)
    loss, _ = trainer.step(images, labels, torch.zeros((), dtype=torch.int64))
    assert penalty > 0 and torch.equal(loss, calls[0] + penalty.detach())


def test_clipping_is_counted_per_epoch(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run", epochs=2, clip_grad_norm=1e-6)
    trainer, lines = train(config)
    steps = len(trainer.train_loader)
    assert [r["clipped_steps"] for r in read_metrics(tmp_path / "run")] == [steps, steps]
    assert lines[0].endswith(f"clipped {steps} steps")
    trainer, lines = train(make_config(fake_data, tmp_path / "plain"))
    assert read_metrics(tmp_path / "plain")[0]["clipped_steps"] == 0
    assert "clipped" not in lines[0]


def test_class_weights_and_label_smoothing_change_the_loss(fake_data, tmp_path):
    config = make_config(fake_data, tmp_path / "run")
    full = load_run_data(config.resolved(), progress=False)
    labels = full.train.labels  # classes 5-9 keep a quarter of their images
    uneven = torch.cat([torch.nonzero(labels < 5)[:, 0], torch.nonzero(labels >= 5)[::4, 0]])
    data = RunData(full.train.subset(uneven), None, full.test, full.mean, full.std)
    logits = torch.randn(30, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(30) % 10

    def criterion_with(**overrides):
        trainer = Trainer(make_config(fake_data, tmp_path / "run", **overrides), data=data)
        trainer.setup(create_run=False)
        return trainer.criterion

    plain = criterion_with()(logits, targets)
    weighted = criterion_with(class_weights=True)
    assert torch.equal(weighted.weight, class_weights(data.train.labels, 10))
    assert weighted.weight[9] > weighted.weight[0]
    smoothed = criterion_with(label_smoothing=0.2)
    assert plain != weighted(logits, targets) and plain != smoothed(logits, targets)
    expected = F.cross_entropy(logits, targets, label_smoothing=0.2)
    assert torch.allclose(smoothed(logits, targets), expected)


# ---- transfer learning --------------------------------------------------------------------------


def test_init_from_with_frozen_features(fake_data, tmp_path):
    train(make_config(fake_data, tmp_path / "first"))
    trained = weights(tmp_path / "first" / "model.safetensors")
    config = make_config(
        fake_data, tmp_path / "second", init_from=str(tmp_path / "first"), freeze="features"
    )
    start: dict[str, torch.Tensor] = {}
    trainer, _ = train(config, lambda t: start.update(state_copy(t.model)))

    final = state_copy(trainer.model)
    features = [key for key in trained if key.startswith("features.")]
    head = [key for key in trained if not key.startswith("features.")]
    assert features and head
    for key in features:  # started from the first run and stayed there
        assert torch.equal(start[key], trained[key]) and torch.equal(final[key], trained[key])
        assert not trainer.model.get_parameter(key).requires_grad
    assert torch.equal(start["hidden.0.weight"], trained["hidden.0.weight"])
    assert not torch.equal(start["fc.weight"], trained["fc.weight"])  # a fresh classifier
    for key in head:
        assert not torch.equal(final[key], start[key]), key
    assert json.loads((tmp_path / "second" / "evaluation.json").read_text())["count"] == 40


# ---- command line -------------------------------------------------------------------------------


def test_cli_flags_override_the_config_file(fake_data, tmp_path, capsys):
    settings = tmp_path / "settings.toml"
    settings.write_text(
        'model = "lenet"\nepochs = 1\nbatch_size = 32\nlr = 0.05\nquiet = true\n'
        f'device = "cpu"\ndata_dir = "{fake_data}"\nlabel_smoothing = 0.1\n'
    )
    run = tmp_path / "run"
    code = main(
        ["train", "--config", str(settings), "--batch-size", "16", "--lr", "0.2", "--out", str(run)]
    )
    assert code == 0
    saved = load_toml(run / "config.toml")
    assert saved["batch_size"] == 16 and saved["lr"] == 0.2  # the flags
    assert saved["epochs"] == 1 and saved["label_smoothing"] == 0.1  # the file
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"run folder: {run}")

    code = main(["train", "--resume", str(run), "--epochs", "3", "--seed", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cnnlab train: error: --resume") and "drop epochs, seed\n" in err
