"""Settings chosen from the data where cnnlab has no tuned defaults: resolution, batch size,
learning rate, augmentation, class weights and the fast recipes' network, each with a reason."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import ImageSet
from cnnlab.runs.config import load_toml
from cnnlab.runs.data_fit import fit_to_data, has_tuned_defaults
from cnnlab.train import TrainConfig, Trainer, config_from

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def images(count: int, channels: int, side: int, classes: int = 2, counts=None) -> ImageSet:
    counts = counts or [count // classes] * classes
    labels = torch.cat([torch.full((n,), label) for label, n in enumerate(counts)])
    pixels = torch.zeros(len(labels), channels, side, side, dtype=torch.uint8)
    return ImageSet("folder/train", pixels, labels, [f"c{i}" for i in range(classes)])


def fit(config: TrainConfig, data: ImageSet, device=CPU, defaults=(96, 256, 0.05), min_side=32):
    return fit_to_data(config.resolved(), data, device, defaults, min_side)


def test_large_grayscale_photos_keep_their_detail_within_what_a_cpu_trains():
    config = fit(TrainConfig(model="resnet18", dataset="photos"), images(2000, 1, 300))
    assert config.resize == 128 and "300x300 lowered" in config.data_choices["resize"]
    assert config.batch_size == 64  # 2,000 images: at least 30 steps per epoch
    assert config.lr == pytest.approx(0.05 * 64 / 256)
    assert config.augment == "crop-reflect" and "no flips" in config.data_choices["augment"]
    assert config.class_weights is False


def test_small_colour_images_are_not_blown_up():
    config = fit(TrainConfig(model="resnet18", dataset="cifar"), images(50_000, 3, 32, 10))
    assert (config.resize, config.batch_size, config.lr) == (32, 256, 0.05)
    assert config.augment == "crop-reflect,flip"
    assert config.data_choices["resize"] == "32: the images' own size (32x32)"


def test_images_below_the_models_minimum_are_raised_to_it():
    config = fit(TrainConfig(model="alexnet", dataset="d"), images(600, 1, 28), min_side=63)
    assert config.resize == 64 and "raised to the model's minimum" in config.data_choices["resize"]


def test_many_large_images_on_a_cpu_are_lowered_further_and_a_gpu_takes_more():
    many = images(50_000, 3, 256)
    assert fit(TrainConfig(model="resnet18", dataset="d"), many).resize == 64
    assert fit(TrainConfig(model="resnet18", dataset="d"), many, device=GPU).resize == 224


def test_imbalanced_classes_get_class_weights():
    data = images(0, 3, 32, classes=3, counts=[500, 100, 90])
    config = fit(TrainConfig(model="resnet18", dataset="d"), data)
    assert config.class_weights is True and "5.6x" in config.data_choices["class_weights"]


def test_settings_given_are_kept_and_only_choices_have_reasons():
    given = TrainConfig(model="resnet18", dataset="d", resize=40, batch_size=32, lr=0.1,
                        augment="flip", class_weights=False)  # fmt: skip
    config = fit(given, images(2000, 1, 300))
    assert (config.resize, config.batch_size, config.lr, config.augment) == (40, 32, 0.1, "flip")
    assert config.data_choices == {}


def test_fashion_mnist_keeps_d2ls_settings():
    assert has_tuned_defaults("fashion-mnist") and not has_tuned_defaults("cifar10")
    config = TrainConfig(model="resnet18", dataset="fashion-mnist").resolved()
    assert (config.resize, config.batch_size, config.lr, config.augment) == (96, 256, 0.05, "none")


@pytest.mark.parametrize(("side", "stages"), [(32, 3), (64, 4), (128, 5)])
def test_a_fast_recipe_is_a_family_sized_for_the_images(side, stages):
    config = config_from({"recipe": "fast", "dataset": "photos"})
    fitted = fit(config, images(4000, 3, side), defaults=(None, 256, 0.2), min_side=8)
    assert len(fitted.model_options["widths"]) == stages and fitted.resize == side
    assert fitted.model_options["widths"][:3] == [64, 128, 256]
    assert fitted.tta == "flip"  # colour images train with flips, so flip TTA stays


def test_a_fast_recipe_on_gray_photos_drops_flip_tta():
    config = config_from({"recipe": "fast-93", "dataset": "photos"})
    fitted = fit(config, images(4000, 1, 64), defaults=(None, 256, 0.2), min_side=8)
    assert fitted.augment == "crop-reflect" and fitted.tta == "none"


def test_training_on_a_folder_chooses_from_the_data_and_says_why(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("ok", "scratched"):
        (tmp_path / "parts" / label).mkdir(parents=True)
        for index in range(40):
            pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "parts" / label / f"{index}.png")
    lines = []
    config = TrainConfig(model="resnet18", dataset=str(tmp_path / "parts"), epochs=1, quiet=True,
                         out=str(tmp_path / "run"), precision="fp32")  # fmt: skip
    trainer = Trainer(config, echo=lines.append)
    trainer.fit()
    assert trainer.config.resize == 48 and trainer.config.batch_size == 16
    assert "from the data: resize 48: the images' own size (48x48)" in lines
    saved = load_toml(tmp_path / "run" / "config.toml")
    assert saved["resize"] == 48 and saved["augment"] == "crop-reflect"
    assert set(saved["data_choices"]) == {"resize", "batch_size", "lr", "augment", "class_weights"}


def test_a_lowered_resolution_never_goes_below_the_models_minimum():
    data = images(50_000, 3, 100)  # the CPU's pixel cap alone would give 64
    config = fit(TrainConfig(model="nin", dataset="d"), data, min_side=67)
    assert config.resize == 72 and "lowered" in config.data_choices["resize"]


def test_a_fast_recipe_gets_its_sized_network_even_when_every_data_field_is_given():
    from cnnlab.train.setup import RunData, fit_to_run_data

    given = dict(resize=64, batch_size=64, lr=0.1, augment="flip", class_weights=False)
    config = config_from({"recipe": "fast-90", "dataset": "photos", **given}).resolved()
    data = RunData(images(600, 3, 64), None, None, [0.5] * 3, [0.2] * 3)
    fitted = fit_to_run_data(config, data, CPU, lambda line: None)
    assert fitted.model_options["widths"] == [32, 64, 128, 128]  # 4 stages for 64x64
    assert (fitted.resize, fitted.batch_size, fitted.augment) == (64, 64, "flip")
