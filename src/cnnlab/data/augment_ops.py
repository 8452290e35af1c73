"""The random augmentation ops, each on a whole batch at once with no per-sample Python.

Every random op is a small object called as `op(x, generator)`: `x` is a float batch
N x C x H x W (CPU or CUDA) and `generator` a `torch.Generator` on the same device (or None for
the global one), so that a seeded loader reproduces the same augmented batches. Per-sample
randomness (offsets, coin flips, rectangles, factors) is drawn as one tensor of N values and
applied with index arithmetic, `torch.where` or coordinate masks. Each op has a `stage` saying
where `cnnlab.data.augment.BatchPipeline` runs it. Ops never modify their input, but may return
it unchanged. On the CPU, ops keep fresh full-size tensors to one or two per call: the page
faults of fresh large tensors cost more than the arithmetic at 28x28.

- `RandomCrop`: pad by `padding` pixels (zero or reflect) and cut a window of the original size
  at a random offset; a strided view holds every possible window, and one advanced-indexing
  copy picks each sample's.
- `HorizontalFlip`: mirror each sample with probability p.
- `RandomErasing`: Zhong et al., "Random Erasing Data Augmentation" (AAAI 2020, arXiv 2017):
  with probability p, one rectangle of random area fraction and aspect ratio is filled with
  zeros or random values. As in the paper's Algorithm 1 a sample gets several attempts to draw
  a rectangle that fits (10 here, as torchvision), and stays as it is when none does. The aspect
  ratio is drawn log-uniformly (tall and wide equally likely) where the paper draws it
  uniformly. It runs after normalisation, so a "zero" fill is the dataset mean (torchvision's
  default) and a "random" fill, the paper's best, is N(0, 1) noise in normalised units.
- `ColorJitter`: brightness, contrast and saturation factors drawn uniformly from
  [max(0, 1 - s), 1 + s], applied in that fixed order on [0, 1] pixels (grey levels: ITU-R
  BT.601 luma, as PIL). RGB only: a batch that does not have 3 channels is refused with an
  `InputShapeError`, since saturation has no meaning for it. No hue jitter.
- `resize`: bilinear interpolation, antialiased when shrinking. d2l trains the 28x28 datasets
  at 224 for AlexNet/VGG/NiN and at 96 for GoogLeNet/ResNet/DenseNet; LeNet stays at 28.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError, InputShapeError

# Ops that only move pixels run first, on the stored uint8 batch, where moving a batch costs a
# quarter of what it costs in float32 (this made an augmented LeNet batch twice as fast).
MOVES = "moves"
PIXELS = "pixels"  # ops that see [0, 1] values at the stored resolution
NORMALIZED = "normalized"  # ops that see normalised values at the model's resolution

# An augmentation op: (batch, generator) -> new batch; it also has a `stage`. Ops of the MOVES
# stage take any dtype, the others float batches.
Op = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

# ITU-R BT.601 luma weights, the grey level PIL and torchvision use.
LUMA = (0.299, 0.587, 0.114)


def check_batch(x: torch.Tensor, op: str, any_dtype: bool = False) -> None:
    if x.dim() != 4 or not (any_dtype or x.is_floating_point()):
        kind = "a batch" if any_dtype else "a float batch"
        raise InputShapeError(
            f"{op} expects {kind} N x C x H x W, got {x.dtype} of shape {tuple(x.shape)}"
        )


def check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise CnnlabError(f"{name}: probability must be in [0, 1], got {p}")


def uniform(n: int, low: float, high: float, x: torch.Tensor, generator) -> torch.Tensor:
    """n values drawn uniformly from [low, high), on x's device."""
    values = torch.rand(n, generator=generator, device=x.device)
    return values.mul_(high - low).add_(low)


class RandomCrop:
    """A window of the input's size at a random offset in the input padded by `padding` pixels."""

    stage = MOVES

    def __init__(self, padding: int = 4, mode: str = "zero"):
        if padding < 0:
            raise CnnlabError(f"crop: padding must be >= 0, got {padding}")
        if mode not in ("zero", "reflect"):
            raise CnnlabError(f"crop: padding mode must be 'zero' or 'reflect', got {mode!r}")
        self.padding = padding
        self.mode = mode

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_batch(x, "crop", any_dtype=True)
        n, channels, height, width = x.shape
        pad = self.padding
        if self.mode == "reflect" and pad >= min(height, width):
            raise InputShapeError(
                f"crop: reflect padding of {pad} needs images larger than that, "
                f"got {height}x{width}"
            )
        if pad == 0:
            return x
        padded = F.pad(
            x, (pad, pad, pad, pad), mode="constant" if self.mode == "zero" else "reflect"
        )
        # A view of every window of every sample, N x dy x dx x C x H x W (no copy); indexing it
        # with each sample's offsets copies just the chosen windows, with N-long index tensors.
        n_stride, c_stride, h_stride, w_stride = padded.stride()
        windows = padded.as_strided(
            (n, 2 * pad + 1, 2 * pad + 1, channels, height, width),
            (n_stride, h_stride, w_stride, c_stride, h_stride, w_stride),
        )
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x.device)
        return windows[torch.arange(n, device=x.device), offsets[0], offsets[1]]


class HorizontalFlip:
    """Mirror each sample left-right with probability p."""

    stage = MOVES

    def __init__(self, p: float = 0.5):
        check_probability(p, "flip")
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_batch(x, "flip", any_dtype=True)
        n, channels, height, width = x.shape
        flip = torch.rand(n, generator=generator, device=x.device) < self.p
        # Each sample's column order, then one gather: cheaper than blending x with x.flip(3).
        cols = torch.arange(width, device=x.device)
        source_cols = torch.where(flip[:, None], width - 1 - cols, cols)
        return x.gather(3, source_cols[:, None, None, :].expand(n, channels, height, width))


class RandomErasing:
    """Zhong et al. (2017): with probability p, fill one random rectangle of each sample."""

    stage = NORMALIZED
    attempts = 10

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
        fill: str = "random",
    ):
        check_probability(p, "erase")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise CnnlabError(
                f"erase: area fractions must satisfy 0 < low <= high <= 1, got {scale}"
            )
        if not 0.0 < ratio[0] <= ratio[1]:
            raise CnnlabError(f"erase: aspect ratios must satisfy 0 < low <= high, got {ratio}")
        if fill not in ("zero", "random"):
            raise CnnlabError(f"erase: fill must be 'zero' or 'random', got {fill!r}")
        self.p, self.scale, self.ratio, self.fill = p, scale, ratio, fill

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_batch(x, "erase")
        in_rows, in_cols = self.rectangles(x, generator)
        # x - x * mask (+ noise * mask) with the mask the outer product in_rows x in_cols: exact
        # where the mask is 0 or 1, and in place after the first product (one fresh tensor).
        inside = (x * in_rows).mul_(in_cols)
        out = inside.neg_().add_(x)
        if self.fill == "random":
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out.add_(noise.mul_(in_rows).mul_(in_cols))
        return out

    def rectangles(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (N x 1 x H x 1) and columns (N x 1 x 1 x W) of the rectangle to erase in each
        sample, 1.0 inside and 0.0 outside (all 0 where the coin said no or no attempt fitted)."""
        n, _, height, width = x.shape
        tries = n * self.attempts
        area = uniform(tries, *self.scale, x, generator) * (height * width)
        log_ratio = uniform(tries, math.log(self.ratio[0]), math.log(self.ratio[1]), x, generator)
        aspect = log_ratio.exp_()
        heights = (area * aspect).sqrt_().round_().long().view(n, self.attempts)
        widths = (area / aspect).sqrt_().round_().long().view(n, self.attempts)
        fits = (heights >= 1) & (widths >= 1) & (heights <= height) & (widths <= width)
        first_fit = fits.byte().argmax(1, keepdim=True)  # argmax returns the first maximum
        heights = heights.gather(1, first_fit).squeeze(1)
        widths = widths.gather(1, first_fit).squeeze(1)
        coin = torch.rand(n, generator=generator, device=x.device) < self.p
        erase = coin & fits.any(1)
        corner = torch.rand(2, n, generator=generator, device=x.device)
        top = (corner[0] * (height - heights + 1)).long()
        left = (corner[1] * (width - widths + 1)).long()
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + heights)[:, None]) & erase[:, None]
        in_cols = (cols >= left[:, None]) & (cols < (left + widths)[:, None])
        return in_rows.to(x.dtype)[:, None, :, None], in_cols.to(x.dtype)[:, None, None, :]


class ColorJitter:
    """Random brightness, contrast and saturation of RGB batches; a strength of 0 skips that
    part (exactly the identity)."""

    stage = PIXELS

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        for name, strength in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if strength < 0:
                raise CnnlabError(f"jitter: {name} strength must be >= 0, got {strength}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_batch(x, "jitter")
        if x.shape[1] != 3:
            raise InputShapeError(
                f"jitter: colour jitter needs RGB images (3 channels), got {x.shape[1]} channel(s) "
                f"in a batch of shape {tuple(x.shape)}; leave 'jitter' out for grey images"
            )
        if not (self.brightness or self.contrast or self.saturation):
            return x
        x = x.clone()  # the one new tensor; the blends below work in place
        if self.brightness:
            blend_(x, 0.0, self.factors(self.brightness, x, generator))
        if self.contrast:
            mean_grey = grey(x).mean(dim=(1, 2, 3), keepdim=True)
            blend_(x, mean_grey, self.factors(self.contrast, x, generator))
        if self.saturation:
            blend_(x, grey(x), self.factors(self.saturation, x, generator))
        return x

    @staticmethod
    def factors(strength: float, x: torch.Tensor, generator) -> torch.Tensor:
        low = max(0.0, 1.0 - strength)
        return uniform(x.shape[0], low, 1.0 + strength, x, generator).view(-1, 1, 1, 1)


def blend_(x: torch.Tensor, base, factor: torch.Tensor) -> torch.Tensor:
    """x <- factor * x + (1 - factor) * base, clamped to [0, 1], in place."""
    return x.mul_(factor).add_(base * (1.0 - factor)).clamp_(0.0, 1.0)


def grey(x: torch.Tensor) -> torch.Tensor:
    """The luma of an RGB batch, N x 1 x H x W."""
    red, green, blue = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (red * LUMA[0]).add_(green, alpha=LUMA[1]).add_(blue, alpha=LUMA[2])


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch to `size` (H, W); antialiased when shrinking, so that
    downscaled images do not alias. Returns `x` itself when it already has that size."""
    check_batch(x, "resize")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
