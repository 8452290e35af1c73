"""Time-to-accuracy (--target-acc) and flip test-time augmentation (--tta flip)."""

import json
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.runs.weights import read_weights
from cnnlab.train import Interrupted, TrainConfig, Trainer
from cnnlab.train.evaluate import evaluate


def config(data, out, **settings):
    base = dict(model="lenet_bn", data_dir=str(data), out=str(out), batch_size=16, quiet=True,
                val_split=0.25, epochs=3)  # fmt: skip
    return TrainConfig(**{**base, **settings})


def test_target_accuracy_stops_and_records_the_time(fake_data, tmp_path):
    lines = []
    history = Trainer(config(fake_data, tmp_path / "run", target_acc=0.01), echo=lines.append).fit()
    assert len(history) == 1 and history[0]["time_to_target_s"] > 0
    assert any(line.startswith("reached validation accuracy") for line in lines)
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "time to validation accuracy 0.01" in summary
    saved = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert saved[0]["time_to_target_s"] == history[0]["time_to_target_s"]


def test_unreached_target_trains_every_epoch(fake_data, tmp_path):
    history = Trainer(config(fake_data, tmp_path / "run", target_acc=1.0, epochs=2)).fit()
    assert len(history) == 2 and all("time_to_target_s" not in r for r in history)


def test_target_needs_a_validation_split():
    with pytest.raises(CnnlabError, match="never the test set"):
        TrainConfig(target_acc=0.9).resolved()
    with pytest.raises(CnnlabError, match="--target-acc"):
        TrainConfig(target_acc=1.5, val_split=0.1).resolved()


def test_flip_tta_scores_the_mean_of_both_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(4))
    images, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    model(images)  # materialise the lazy layer
    result = evaluate(model, [(images, labels)], 4, torch.device("cpu"), tta="flip")
    with torch.no_grad():
        logits = (model(images) + model(images.flip(3))) / 2
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    plain = evaluate(model, [(images, labels)], 4, torch.device("cpu"))
    assert plain.loss != pytest.approx(result.loss)


def test_weight_average_is_what_is_evaluated_and_saved(fake_data, tmp_path):
    trainer = Trainer(config(fake_data, tmp_path / "run", ema=0.9, epochs=1))
    trainer.fit()
    tensors, _ = read_weights(tmp_path / "run" / "model.safetensors")
    averaged = trainer.average.model.state_dict()
    assert all(torch.equal(tensors[k], averaged[k]) for k in averaged)
    assert not torch.equal(tensors["fc.weight"], trainer.model.fc.weight.detach())


def test_weight_average_resumes_exactly(fake_data, tmp_path, monkeypatch):
    settings = dict(ema=0.8, epochs=2, deterministic=True, augment="crop,flip")
    Trainer(config(fake_data, tmp_path / "straight", **settings)).fit()

    original_step = Trainer.step
    calls = []

    def step_then_stop(self, *args):
        result = original_step(self, *args)
        calls.append(1)
        if len(calls) == 9:  # mid-way through epoch 2 (6 batches per epoch)
            self.stop_signal = signal.SIGINT
        return result

    monkeypatch.setattr(Trainer, "step", step_then_stop)
    with pytest.raises(Interrupted):
        Trainer(config(fake_data, tmp_path / "resumed", **settings)).fit()
    monkeypatch.setattr(Trainer, "step", original_step)
    Trainer.resume(tmp_path / "resumed", echo=lambda line: None).fit()
    straight, _ = read_weights(tmp_path / "straight" / "model.safetensors")
    resumed, _ = read_weights(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_deterministic_runs_never_measure(fake_data, tmp_path):
    lines = []
    settings = dict(precision="auto", epochs=1, deterministic=True)
    trainer = Trainer(config(fake_data, tmp_path / "run", **settings), echo=lines.append)
    trainer.fit()
    assert not any(line.startswith("fastest step") for line in lines)
    assert (trainer.config.precision, trainer.config.memory_format) == ("fp32", "contiguous")


def test_channels_last_trains_like_contiguous(fake_data, tmp_path):
    results = []
    for memory_format in ("contiguous", "channels_last"):
        run = tmp_path / memory_format
        settings = dict(memory_format=memory_format, epochs=1, seed=3, lr=0.01)
        Trainer(config(fake_data, run, **settings)).fit()
        results.append(read_weights(run / "model.safetensors")[0])
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-3, atol=1e-3)
