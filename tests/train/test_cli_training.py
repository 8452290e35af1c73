"""The training commands end to end through the CLI, on a tiny fake Fashion-MNIST:
train -> eval -> predict -> train --init-from --freeze -> lr-find -> cv -> reproduce."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.train import Trainer


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "train",
        "--model",
        "lenet_bn",
        "--data-dir",
        str(shared_data),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--out",
        str(run),
        "--quiet",
        "--augment",
        "crop,flip",
    ]
    assert main(argv) == 0
    return shared_data, run


def test_train_prints_test_accuracy_last(trained, capsys):
    _, run = trained
    assert (run / "model.safetensors").is_file() and (run / "curves.png").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_eval_matches_the_run(trained, capsys):
    data, run = trained
    assert main(["eval", str(run), "--data-dir", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "evaluation.json").read_text())
    assert result["acc"] == pytest.approx(saved["acc"]) and result["count"] == 40
    assert main(["eval", str(run), "--data-dir", str(data)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_predict_own_images(trained, tmp_path, capsys):
    _, run = trained
    paths = []
    for i, mode in enumerate(("L", "RGB")):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((40, 30, 3), 90 * i, dtype=np.uint8)).convert(mode).save(path)
        paths.append(str(path))
    assert main(["predict", str(run), *paths, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in paths)
    assert main(["predict", str(run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_init_from_with_frozen_features(trained, tmp_path, capsys):
    data, run = trained
    argv = [
        "train",
        "--model",
        "lenet_bn",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(tmp_path / "transfer"),
        "--quiet",
        "--init-from",
        str(run),
        "--freeze",
        "features",
    ]
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out.strip().splitlines()[-1]
    summary = (tmp_path / "transfer" / "summary.txt").read_text()
    trainable = int(summary.split("trainable ")[1].split(")")[0].replace(",", ""))
    assert 0 < trainable < 61_000  # the head only


def test_lr_find_with_plot(trained, tmp_path, capsys):
    data, _ = trained
    plot = tmp_path / "lr.png"
    argv = [
        "lr-find",
        "--model",
        "lenet_bn",
        "--data-dir",
        str(data),
        "--batch-size",
        "16",
        "--steps",
        "15",
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    assert "lr" in capsys.readouterr().out and plot.stat().st_size > 0


def test_cross_validation(trained, tmp_path, capsys):
    data, _ = trained
    argv = [
        "cv",
        "--folds",
        "2",
        "--model",
        "lenet",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(tmp_path / "cv"),
        "--quiet",
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "cv" / "cross_validation.json").read_text())
    assert result["folds"] == 2 and len(result["per_fold"]) == 2
    assert "±" in capsys.readouterr().out


def test_reproduce_one_recipe(trained, tmp_path, capsys):
    data, _ = trained
    argv = [
        "reproduce",
        "d2l",
        "--models",
        "lenet_bn",
        "--epochs",
        "1",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "d2l"),
        "--quiet",
    ]
    assert main(argv) == 0
    assert "lenet_bn" in capsys.readouterr().out


def test_resume_accepts_quiet_but_not_run_settings(trained, tmp_path, capsys):
    """--quiet changes only what is printed, so it is no run setting: --resume takes it for
    this invocation, and config.toml keeps the run's own value."""
    _, finished = trained
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    config = run / "config.toml"
    assert "quiet = true" in config.read_text() and "epochs = 2" in config.read_text()
    settings = config.read_text().replace("quiet = true", "quiet = false")
    config.write_text(settings.replace("epochs = 2", "epochs = 3"))
    resumed = config.read_text()
    assert Trainer.resume(run, quiet=True).config.quiet
    assert not Trainer.resume(run).config.quiet
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "epoch 3/3" in capsys.readouterr().out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert config.read_text() == resumed
    assert main(["train", "--resume", str(run), "--quiet", "--epochs", "4"]) == 2
    assert "drop epochs" in capsys.readouterr().err
