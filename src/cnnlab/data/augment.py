"""From a stored uint8 batch to the float batch a model eats, augmented on the training device.

`BatchPipeline` does it in this order: the moves (crop, flip) on the stored uint8 batch, to
[0, 1] floats, the pixel ops (jitter) at the stored resolution (cheapest, and a padding of 4
means 4 stored pixels whatever the model size), resize, per-dataset normalisation, then the ops
on normalised values (erasing). The ops themselves, and what each one does, are in
`cnnlab.data.augment_ops`.
`parse_augmentations("crop,flip,erase")` builds the training ops from the names in
`AUGMENTATIONS` (the CLI's `--augment LIST`). The pipeline works in place on the float batch it
made. `MovedBatches` draws batches already cropped and flipped, in one indexing op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cnnlab.data.augment_ops import (
    MOVES,
    NORMALIZED,
    PIXELS,
    ColorJitter,
    HorizontalFlip,
    Op,
    RandomCrop,
    RandomErasing,
    resize,
)
from cnnlab.errors import CnnlabError, InputShapeError


class BatchPipeline:
    """uint8 batch N x C x H x W -> normalised float32 batch at `size`, augmented by `train_ops`.

    `mean` and `std` are per channel, in [0, 1] units (as `ImageSet.mean_std()` gives them);
    `size` is an int or (H, W), None to keep the stored size. `for_eval()` is the same pipeline
    without augmentation, for validation and test batches.
    """

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        size: int | tuple[int, int] | None = None,
        train_ops: Sequence[Op] = (),
    ):
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != std.numel() or mean.numel() == 0:
            raise CnnlabError(
                f"normalisation needs one mean and one std per channel, got {mean.numel()} means "
                f"and {std.numel()} stds"
            )
        if not bool((std > 0).all()):
            raise CnnlabError(f"normalisation std must be > 0, got {std.tolist()}")
        self.mean, self.std = mean, std
        self.size = None if size is None else as_size(size)
        self.move_ops = tuple(op for op in train_ops if op.stage == MOVES)
        self.pixel_ops = tuple(op for op in train_ops if op.stage == PIXELS)
        self.normalized_ops = tuple(op for op in train_ops if op.stage == NORMALIZED)
        # The statistics on each device used, so that a batch costs no host-to-device copy.
        self.device_statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def train_ops(self) -> tuple[Op, ...]:
        return self.move_ops + self.pixel_ops + self.normalized_ops

    def for_eval(self) -> BatchPipeline:
        return BatchPipeline(self.mean, self.std, self.size)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise InputShapeError(
                f"the batch pipeline expects uint8 images N x C x H x W, got {images.dtype} of "
                f"shape {tuple(images.shape)}"
            )
        channels = images.shape[1]
        if self.mean.numel() not in (1, channels):
            raise InputShapeError(
                f"normalisation statistics are for {self.mean.numel()} channel(s), the batch has "
                f"{channels}: shape {tuple(images.shape)}"
            )
        for op in self.move_ops:
            images = op(images, generator)
        return self.finish(images, generator)

    def finish(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Everything after the moves: for batches that `MovedBatches` has already moved."""
        x = images.to(torch.float32).div_(255.0)  # a fresh tensor: the in-place ops are safe
        for op in self.pixel_ops:
            x = op(x, generator)
        if self.size is not None:
            x = resize(x, self.size)
        mean, std = self.statistics(images.device)
        x = x.sub_(mean).div_(std)
        for op in self.normalized_ops:
            x = op(x, generator)
        return x

    def statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std shaped 1 x C x 1 x 1 on `device`, copied there once."""
        if device not in self.device_statistics:
            self.device_statistics[device] = (
                self.mean.view(1, -1, 1, 1).to(device),
                self.std.view(1, -1, 1, 1).to(device),
            )
        return self.device_statistics[device]


class MovedBatches:
    """Batches drawn from the stored images, cropped and flipped, in one indexing op.

    Crop with zero padding and flip only move pixels. Rather than gathering a batch and then
    moving its pixels (three passes over memory, each paying per-op overhead that dominates a
    200 KB LeNet batch), the stored uint8 images are zero-padded once (and mirrored once, when
    flipping), and each batch is a single advanced-indexing read from a view of every window
    of every image. This costs one padded copy of the images (two with flip). A flipped sample's
    window is taken from the mirrored image, so its horizontal offset is mirrored as well: the
    distribution of crops and flips is the same as cropping then flipping.
    `for_pipeline` returns None unless the pipeline's moves are exactly such a crop and/or flip.
    """

    def __init__(self, images: torch.Tensor, crop: RandomCrop | None, flip: HorizontalFlip | None):
        n, channels, height, width = images.shape
        self.pad = crop.padding if crop is not None else 0
        self.flip_p = flip.p if flip is not None else 0.0
        padded = F.pad(images, (self.pad,) * 4) if self.pad else images
        sources = torch.stack([padded, padded.flip(3)]) if flip is not None else padded[None]
        s_flip, s_n, s_c, s_h, s_w = sources.stride()
        span = 2 * self.pad + 1
        self.windows = sources.as_strided(
            (len(sources), n, span, span, channels, height, width),
            (s_flip, s_n, s_h, s_w, s_c, s_h, s_w),
        )
        self.sources = sources  # keeps the storage of the view alive

    @staticmethod
    def for_pipeline(images: torch.Tensor, pipeline: BatchPipeline | None) -> MovedBatches | None:
        if pipeline is None or not pipeline.move_ops:
            return None
        crops = [op for op in pipeline.move_ops if isinstance(op, RandomCrop) and op.mode == "zero"]
        flips = [op for op in pipeline.move_ops if isinstance(op, HorizontalFlip)]
        if len(crops) > 1 or len(flips) > 1 or len(crops) + len(flips) != len(pipeline.move_ops):
            return None
        return MovedBatches(images, crops[0] if crops else None, flips[0] if flips else None)

    def __call__(self, indices: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = len(indices)
        device = self.windows.device
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator, device=device)
        if self.flip_p > 0:
            flipped = (torch.rand(n, generator=generator, device=device) < self.flip_p).long()
        else:
            flipped = torch.zeros(n, dtype=torch.long, device=device)
        return self.windows[flipped, indices, offsets[0], offsets[1]]


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise CnnlabError(f"an image size must be one positive int or (height, width), got {size}")
    return (int(pair[0]), int(pair[1]))


# The names `--augment` takes: a factory of the op with the usual settings, and what it does.
AUGMENTATIONS: dict[str, tuple[Callable[[], Op], str]] = {
    "crop": (lambda: RandomCrop(padding=4), "random crop after 4-pixel zero padding"),
    "crop-reflect": (
        lambda: RandomCrop(padding=4, mode="reflect"),
        "random crop after 4-pixel reflect padding",
    ),
    "flip": (lambda: HorizontalFlip(0.5), "horizontal flip with probability 0.5"),
    "erase": (
        lambda: RandomErasing(0.5, fill="zero"),
        "random erasing (Zhong et al.) with probability 0.5, filled with the dataset mean",
    ),
    "erase-random": (
        lambda: RandomErasing(0.5, fill="random"),
        "random erasing with probability 0.5, filled with N(0, 1) noise (slower on the CPU)",
    ),
    "jitter": (
        lambda: ColorJitter(0.4, 0.4, 0.4),
        "brightness, contrast and saturation jitter of 0.4 (RGB only)",
    ),
}


def parse_augmentations(spec: str | None) -> list[Op]:
    """The ops named in a comma list such as "crop,flip,erase"; "" or "none" gives none."""
    names = [name.strip().lower() for name in (spec or "").split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise CnnlabError(
            f"unknown augmentation(s) {', '.join(unknown)} in {spec!r}; known: "
            f"{', '.join(AUGMENTATIONS)} (or 'none')"
        )
    return [AUGMENTATIONS[name][0]() for name in names]
