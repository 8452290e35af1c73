"""Settings chosen from the data: resolution, batch size, learning rate, augmentation, class
weights and the fast recipes' network, for datasets cnnlab has no tuned defaults for.

On Fashion-MNIST and the other 28x28 grayscale sets, each family trains with d2l's settings
(`runs.config.FAMILY_DEFAULTS`) and the recipes with their tuned networks. Anywhere else (CIFAR,
the user's own image folder) the settings left unset are chosen here, from what the training
split holds, and each choice is kept with its reason in the run's config.toml (`data_choices`):

- resolution: the images' own size, raised to the model's minimum input size where smaller,
  and lowered only where training at full size is beyond this machine (at most 128 pixels a
  side on a CPU, 224 on a GPU, and no more pixels per epoch than CIFAR-10 at 64x64 on a CPU);
  never squeezed to 32x32 or blown up to 224 for its own sake;
- batch size: the family's, lowered (to a power of two, at least 16) so that an epoch has at
  least 30 steps; an unset learning rate scales with it (the linear scaling rule, Goyal et
  al. 2017, "Accurate, Large Minibatch SGD");
- augmentation: random crops with reflect padding, and horizontal flips for colour images;
  grayscale images get no flips, because their orientation often carries the class (digits,
  letters, documents): add `--augment ...,flip` where it does not;
- class weights: on when the largest class has over 3x the images of the smallest;
- the fast recipes' FastNet: the recipe's widths, with one more pooling stage for each doubling
  of the resolution past 32, so the last feature map stays 4x4 (see `fastnet_options`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from cnnlab.data import DATASETS, ImageSet

# Which fields are chosen from the data when unset (None).
DATA_FIELDS = ("resize", "batch_size", "lr", "augment", "class_weights")
CPU_SIDE, GPU_SIDE = 128, 224
CPU_PIXELS_PER_EPOCH = 50_000 * 64 * 64
MIN_STEPS_PER_EPOCH = 30
IMBALANCE = 3.0
RECIPE_DEFAULTS = (None, 256, 0.2)  # the fast recipes' (input size, batch size, lr)
# The fast recipes' network away from 28x28 grayscale: widths, stem width, convs per block.
FASTNET_FAMILY = {
    "fast-90": ([32, 64, 128], 0, 1),
    "fast-92": ([64, 128, 256], 32, 2),
    "fast-93": ([64, 128, 256], 32, 2),
    "fast-94": ([64, 128, 256], 32, 2),
}


def has_tuned_defaults(dataset: str) -> bool:
    """Fashion-MNIST and the other 28x28 grayscale sets, which d2l's settings were made for."""
    spec = DATASETS.get(dataset)
    return spec is not None and spec.format == "idx"


def fit_to_data(config, train: ImageSet, device: torch.device, defaults: tuple, min_side: int):
    """`config` with every data-chosen field that is still None filled in from `train`, and the
    reasons in `data_choices`. `defaults` is the family's (input size, batch size, lr) and
    `min_side` the model's smallest input side (for FastNet: per its stage count)."""
    _, height, width = train.image_size
    channels, images = train.image_size[0], len(train)
    chosen, why = {}, dict(config.data_choices)
    if config.model == "fastnet" and config.recipe in FASTNET_FAMILY and not config.model_options:
        side = config.resize or resolution(height, width, images, 8, device)[0]
        chosen["model_options"] = fastnet_options(config.recipe, side)
        why["model_options"] = (
            f"the {config.recipe} network with {len(chosen['model_options']['widths'])} pooling "
            f"stages for {side}x{side} inputs (a 4x4 last feature map)"
        )
        min_side = 2 ** len(chosen["model_options"]["widths"])
    if config.resize is None:
        chosen["resize"], why["resize"] = resolution(height, width, images, min_side, device)
    _, batch, lr = defaults
    if config.batch_size is None:
        chosen["batch_size"] = batch_for(images, batch)
        why["batch_size"] = (
            f"{chosen['batch_size']}: at least {MIN_STEPS_PER_EPOCH} steps per epoch over "
            f"{images:,} training images (the family's batch is {batch})"
        )
    if config.lr is None:
        size = chosen.get("batch_size", config.batch_size)
        chosen["lr"] = lr * size / batch
        why["lr"] = f"{chosen['lr']:.3g}: the family's {lr:g} at batch {batch}, scaled to {size}"
    if config.augment is None:
        chosen["augment"], why["augment"] = augmentation(channels)
    if config.class_weights is None:
        chosen["class_weights"], why["class_weights"] = balance(train)
    if config.recipe and config.tta == "flip" and "flip" not in chosen.get("augment", "flip"):
        chosen["tta"] = "none"  # flip TTA without flips in training lowers the accuracy
        why["tta"] = "none: flip test-time augmentation needs flips in training"
    return dataclasses.replace(config, **chosen, data_choices=why)


def resolution(height: int, width: int, images: int, min_side: int, device) -> tuple[int, str]:
    native = min(height, width)
    cap = GPU_SIDE if device.type == "cuda" else CPU_SIDE
    if device.type != "cuda":
        affordable = int(math.sqrt(CPU_PIXELS_PER_EPOCH / images)) // 8 * 8
        cap = min(cap, max(affordable, 32))
    cap = max(cap, math.ceil(min_side / 8) * 8)  # never below what the model takes
    if native < min_side:
        side = math.ceil(min_side / 8) * 8
        return side, f"{side}: the images' {height}x{width} raised to the model's minimum"
    if native > cap:
        where = "GPU" if device.type == "cuda" else "CPU"
        reason = f"{cap}: the images' {height}x{width} lowered to what a {where} trains in time"
        return cap, reason
    return native, f"{native}: the images' own size ({height}x{width})"


def batch_for(images: int, family_batch: int) -> int:
    most = max(16, 2 ** int(math.log2(max(images // MIN_STEPS_PER_EPOCH, 1))))
    return min(family_batch, most)


def augmentation(channels: int) -> tuple[str, str]:
    if channels == 3:
        return "crop-reflect,flip", "crop-reflect,flip: shifts and mirror images of colour photos"
    return "crop-reflect", "crop-reflect: shifts; no flips, grayscale orientation may be the class"


def balance(train: ImageSet) -> tuple[bool, str]:
    counts = train.class_counts().float()
    ratio = float(counts.max() / counts.min().clamp(min=1))
    if ratio > IMBALANCE:
        return True, f"on: the largest class has {ratio:.1f}x the images of the smallest"
    return False, f"off: classes balanced within {ratio:.1f}x"


def fastnet_options(recipe: str, side: int) -> dict:
    widths, stem, depth = FASTNET_FAMILY[recipe]
    extra = max(0, round(math.log2(max(side, 32) / 32)))
    return {"widths": widths + [widths[-1]] * extra, "stem_width": stem, "depth": depth}
