"""Named recipes (`--recipe fast`): what they set, what overrides them, and that they train,
on fake grayscale and RGB data; the run's timeline of where the time went."""

import json

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.runs.config import load_toml
from cnnlab.runs.recipes import RECIPES, recipe_names, recipe_settings
from cnnlab.train import Trainer, config_from


def test_every_recipe_is_a_valid_config_for_gray_and_rgb_data():
    for name in recipe_names():
        for dataset in ("fashion-mnist", "cifar10", "some/image/folder"):
            config = config_from(recipe_settings(name, dataset)).resolved()
            assert config.model == "fastnet" and config.recipe in RECIPES


def test_fast_is_the_92_recipe_and_gray_data_keeps_28_pixels():
    settings = recipe_settings("fast")
    assert settings == recipe_settings("fast-92") and settings["recipe"] == "fast-92"
    assert config_from(settings).resolved().resize == 28
    assert settings["precision"] == "auto" and settings["memory_format"] == "auto"


def test_away_from_28x28_gray_a_recipe_leaves_the_data_dependent_settings_to_the_data():
    gray, other = recipe_settings("fast-90"), recipe_settings("fast-90", "cifar10")
    assert other["model_options"] == {} and other["tta"] == "flip" and other["epochs"] == 2
    assert not {"resize", "batch_size", "lr", "augment"} & set(other)
    assert gray["batch_size"] == 256 and gray["lr"] == 0.2 and "resize" not in gray
    config = config_from({"recipe": "fast-90", "dataset": "cifar10"}).resolved()
    assert (config.resize, config.batch_size, config.lr, config.augment) == (None,) * 4


def test_recipes_get_longer_and_larger_toward_higher_targets():
    costs = []
    for name in ("fast-90", "fast-92", "fast-93", "fast-94"):
        settings = recipe_settings(name)
        costs.append((settings["epochs"], sum(settings["model_options"]["widths"])))
    assert costs == sorted(costs)


def test_settings_override_the_recipe_and_model_options_merge():
    config = config_from({"recipe": "fast", "epochs": 1, "model_options": {"depth": 1}})
    assert config.epochs == 1 and config.optimizer == "nesterov"
    assert config.model_options == {"widths": [32, 64, 128], "stem_width": 24, "depth": 1}


def test_saved_config_of_a_recipe_run_reloads_unchanged():
    config = config_from({"recipe": "fast-93", "lr": 0.05, "model_options": {"depth": 3}})
    values = {k: v for k, v in vars(config).items() if v is not None}
    assert config_from(values) == config


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(CnnlabError, match="no recipe 'fastest'; recipes: fast, fast-90"):
        recipe_settings("fastest")


def test_cli_trains_a_recipe_and_records_it(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--recipe", "fast-90", "--epochs", "1", "--batch-size", "32",
            "--data-dir", str(fake_data), "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    saved = load_toml(run / "config.toml")
    assert saved["recipe"] == "fast-90" and saved["model"] == "fastnet"
    assert saved["epochs"] == 1 and saved["optimizer"] == "nesterov"
    assert saved["precision"] in ("fp32", "bf16") and saved["memory_format"] != "auto"
    assert "test accuracy" in capsys.readouterr().out


def test_timeline_orders_the_stages_of_a_run(fake_data, tmp_path):
    config = config_from({"recipe": "fast-90", "epochs": 1, "batch_size": 32, "quiet": True,
                          "data_dir": str(fake_data), "out": str(tmp_path / "run")})  # fmt: skip
    trainer = Trainer(config, echo=lambda line: None)
    trainer.fit()
    timeline = json.loads((tmp_path / "run" / "timeline.json").read_text())
    stages = ["setup_started", "data_loaded", "step_chosen", "training_started",
              "training_finished", "evaluated", "report_written"]  # fmt: skip
    assert list(timeline) == stages
    assert np.all(np.diff([timeline[s] for s in stages]) >= 0) and timeline["setup_started"] > 0
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "seconds from process start: setup started" in summary


def write_fake_cifar10(root, count=40):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        labels = np.arange(count) % 10
        pixels = rng.integers(0, 80, (count, 3072)) + 15 * labels[:, None]
        records = np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8)
        (folder / name).write_bytes(records.tobytes())
    return root


def test_rgb_variant_trains_on_cifar10(tmp_path):
    root = write_fake_cifar10(tmp_path / "data")
    settings = {"recipe": "fast-90", "dataset": "cifar10", "epochs": 1, "quiet": True,
                "batch_size": 50, "data_dir": str(root), "out": str(tmp_path / "run")}  # fmt: skip
    config = config_from(settings)
    trainer = Trainer(config, echo=lambda line: None)
    history = trainer.fit()
    assert len(history) == 1 and trainer.model.in_channels == 3
    assert trainer.config.resize == 32 and trainer.config.augment == "crop-reflect,flip"
    # the recipe's family at 32x32 colour: three pooling stages of twice the 28x28 widths
    assert trainer.config.model_options == {"widths": [32, 64, 128], "stem_width": 0, "depth": 1}
    saved = load_toml(tmp_path / "run" / "config.toml")
    assert saved["model_options"]["widths"] == [32, 64, 128] and saved["resize"] == 32
    assert saved["data_choices"]["resize"].startswith("32: the images' own size")
