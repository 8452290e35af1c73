"""What a run trains on and with: its datasets and splits, batch pipelines, and model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data import DATASETS, ImageSet, load_dataset
from cnnlab.data.augment import BatchPipeline, parse_augmentations
from cnnlab.data.splits import stratified_split
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.config import TrainConfig, family_defaults, min_input_side
from cnnlab.runs.data_fit import DATA_FIELDS, FASTNET_FAMILY, RECIPE_DEFAULTS, fit_to_data
from cnnlab.runs.weights import load_model, weights_path


@dataclass
class RunData:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    mean: list[float]
    std: list[float]

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def load_run_data(config: TrainConfig, progress: bool = True) -> RunData:
    """The training set (less a stratified validation split), and the test set if there is one;
    normalisation statistics come from the training images only (an image folder without
    split folders: see `load_dataset`)."""
    train = load_dataset(config.dataset, "train", root=config.data_dir, progress=progress)
    test = _test_split(config, progress)
    val = None
    if config.val_split:
        train_idx, val_idx = stratified_split(train.labels, config.val_split, config.seed)
        base = train.name.rsplit("/", 1)[0]
        train, val = train.subset(train_idx, f"{base}/train"), train.subset(val_idx, f"{base}/val")
    if test is not None and test.classes != train.classes:
        raise CnnlabError(
            f"{config.dataset}: the test split's classes {test.classes} differ from the "
            f"training split's {train.classes}"
        )
    mean, std = train.mean_std()
    return RunData(train, val, test, mean.tolist(), std.tolist())


def _test_split(config: TrainConfig, progress: bool) -> ImageSet | None:
    if config.dataset in DATASETS:
        return load_dataset(config.dataset, "test", root=config.data_dir, progress=progress)
    for split in ("test", "val"):  # an image folder: its test/ (else val/) subfolder, if any
        try:
            return load_dataset(config.dataset, split, root=config.data_dir, progress=progress)
        except CnnlabError:
            continue
    return None


def fit_to_run_data(config: TrainConfig, data: RunData, device: torch.device, echo):
    """`config` with the settings left to the data chosen from its training split (see
    `runs.data_fit`), each choice echoed with its reason; unchanged when none is left."""
    family_left = config.recipe in FASTNET_FAMILY and not config.model_options
    if all(getattr(config, name) is not None for name in DATA_FIELDS) and not family_left:
        return config
    defaults = RECIPE_DEFAULTS if config.recipe else family_defaults(config.model)
    min_side = min_input_side(config.model, config.model_options)
    config = fit_to_data(config, data.train, device, defaults, min_side)
    config.validate()
    for name, reason in config.data_choices.items():
        echo(f"from the data: {name} {reason}")
    return config


def pipelines(config: TrainConfig, data: RunData) -> tuple[BatchPipeline, BatchPipeline]:
    """The training pipeline (augmentation, resize, normalisation) and its evaluation twin."""
    train = BatchPipeline(
        data.mean, data.std, size=config.resize, train_ops=parse_augmentations(config.augment)
    )
    return train, train.for_eval()


def build_model(config: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """A fresh model, or one started from a trained run's weights (`init_from`) with a new
    classifier for this dataset's classes and, with `freeze="features"`, a frozen extractor."""
    if not config.init_from:
        return create_model(
            config.model,
            num_classes=num_classes,
            in_channels=in_channels,
            **config.model_options,
        )
    model, metadata = load_model(weights_path(config.init_from))
    if metadata["in_channels"] != in_channels:
        raise CnnlabError(
            f"{config.init_from} was trained on {metadata['in_channels']}-channel images, "
            f"{config.dataset} has {in_channels}-channel images"
        )
    if metadata["model"] != config.model:
        raise CnnlabError(
            f"--init-from {config.init_from} holds a {metadata['model']}, but --model is "
            f"{config.model}; give --model {metadata['model']}"
        )
    model.reset_classifier(num_classes)
    if config.freeze == "features":
        freeze_features(model)
    return model


def freeze_features(model: nn.Module) -> int:
    """Freeze every parameter `forward_features` uses (found by running it once, in eval mode,
    on a blank image of the minimum size); the head stays trainable. Returns how many
    parameters were frozen."""
    used: set[nn.Module] = set()
    hooks = [m.register_forward_hook(lambda m, a, o: used.add(m)) for m in model.modules()]
    modes = {module: module.training for module in model.modules()}
    cfg = model.default_cfg
    try:
        with torch.no_grad():
            model.eval().forward_features(torch.zeros(1, cfg.input_size[0], *cfg.min_input_size))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    frozen = [p for m in used for p in m.parameters(recurse=False)]
    for param in frozen:
        param.requires_grad_(False)
    return sum(p.numel() for p in frozen)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)
