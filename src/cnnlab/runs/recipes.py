"""Named training recipes: complete settings tuned for one goal, `cnnlab train --recipe NAME`.

The `fast` recipes are tuned for time-to-accuracy: the FastNet network (models/fastnet.py), a
one-cycle schedule with Nesterov momentum, label smoothing, bf16 and channels-last where the
trainer measures them faster, and for the longer ones flip (and crop) augmentation with
flip test-time augmentation. Each is named by the Fashion-MNIST test accuracy it was tuned to
reach on average (BENCHMARKS.md, "Time to accuracy": the measured times and spreads):

    fast-90  (16, 32, 64) channels, no stem, one conv per block: 2 epochs
    fast-92  (32, 64, 128) channels, two convs per block: 2 epochs   (`fast` is this one)
    fast-93  the same network, 4 epochs with flip augmentation and flip TTA
    fast-94  the same network, 20 epochs with crop and flip augmentation and flip TTA

Tuning runs (seed 0, one each, 2-core CPU): fast-90's network reached 0.906 after 2 epochs;
fast-92's 0.926; 4 epochs with flips and TTA 0.936, 6 epochs 0.939 (crop and flip: 0.932,
under-fitted); 12 epochs with crop and flip 0.941. Without flip augmentation in training,
flip TTA lowered the 2-epoch accuracy (0.889 against 0.906).

On any other dataset (CIFAR-10/100, an image folder) a recipe names a family rather than one
network (runs/data_fit.py): twice the channels, one more pooling stage per doubling of the
resolution past 32, the images' own resolution within what the machine trains in time, the
batch size and learning rate scaled to the number of images, reflect-padded crops (and flips
for colour images), the augmentation of the CIFAR-10 speed runs (Page, "How to Train Your
ResNet", 2018; Jordan, airbench, 2024).

A recipe supplies defaults only: a `--config` file and command-line flags override it.
"""

from __future__ import annotations

from cnnlab.errors import CnnlabError
from cnnlab.runs.data_fit import has_tuned_defaults

_COMMON = {
    "model": "fastnet",
    "optimizer": "nesterov",
    "momentum": 0.9,
    "lr": 0.2,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "batch_size": 256,
    "precision": "auto",
    "memory_format": "auto",
    "precise_bn": 0,  # the one-cycle schedule ends at a tiny rate: the moving averages are exact
}

# Settings per recipe on 28x28 grayscale data (elsewhere: runs/data_fit.py).
RECIPES: dict[str, dict] = {
    "fast-90": {
        "model_options": {"widths": [16, 32, 64], "stem_width": 0, "depth": 1},
        "epochs": 2,
    },
    "fast-92": {
        "model_options": {"widths": [32, 64, 128], "stem_width": 24, "depth": 2},
        "epochs": 2,
    },
    "fast-93": {
        "model_options": {"widths": [32, 64, 128], "stem_width": 24, "depth": 2},
        "epochs": 4,
        "augment": "flip",
        "tta": "flip",
    },
    "fast-94": {
        "model_options": {"widths": [32, 64, 128], "stem_width": 24, "depth": 2},
        "epochs": 20,
        "augment": "crop,flip",
        "tta": "flip",
    },
}
ALIASES = {"fast": "fast-92"}


def recipe_names() -> list[str]:
    return [*ALIASES, *RECIPES]


def recipe_settings(name: str, dataset: str = "fashion-mnist") -> dict:
    """The TrainConfig settings of recipe `name` for `dataset`, with `recipe` recording the
    name. On a 28x28 grayscale set, the tuned settings; elsewhere the network, resolution,
    batch size, learning rate and augmentation are left to be chosen from the data
    (`runs.data_fit`: the recipe's family of networks, sized for the images)."""
    key = ALIASES.get(name, name)
    if key not in RECIPES:
        raise CnnlabError(f"no recipe {name!r}; recipes: {', '.join(recipe_names())}")
    settings = {**_COMMON, **RECIPES[key], "recipe": key}
    if not has_tuned_defaults(dataset):
        for chosen in ("batch_size", "lr", "augment"):
            settings.pop(chosen, None)
        settings.update(model_options={}, tta="flip")
    settings["model_options"] = dict(settings["model_options"])
    return settings
