"""The batched augmentation ops: each checked on hand-made batches against what it promises,
on every device at hand, and reproducible with a seed."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment_ops import (
    ColorJitter,
    HorizontalFlip,
    RandomCrop,
    RandomErasing,
    resize,
)
from cnnlab.errors import CnnlabError, InputShapeError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def generator(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def distinct_batch(n: int = 16, channels: int = 1, size: int = 12) -> torch.Tensor:
    """Every pixel different and > 0, so that a window, a mirror or a zero gives itself away."""
    return torch.arange(1, n * channels * size * size + 1, dtype=torch.float32).view(
        n, channels, size, size
    )


ALL_OPS = [
    RandomCrop(2),
    RandomCrop(2, "reflect"),
    HorizontalFlip(),
    RandomErasing(fill="zero"),
    RandomErasing(fill="random"),
    ColorJitter(),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: type(op).__name__)
def test_ops_keep_shape_dtype_and_device(op, device):
    x = torch.rand(5, 3, 10, 12, device=device)
    out = op(x, generator(0, device))
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert out.device == x.device


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: type(op).__name__)
def test_ops_leave_their_input_alone(op):
    x = torch.rand(6, 3, 10, 10)
    before = x.clone()
    op(x, generator())
    assert torch.equal(x, before)


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: type(op).__name__)
def test_ops_reproduce_with_a_seed_and_differ_with_another(op):
    x = torch.rand(32, 3, 16, 16)
    first = op(x, generator(1))
    assert torch.equal(first, op(x, generator(1)))
    assert not torch.equal(first, op(x, generator(2)))


def test_ops_refuse_a_non_batch():
    with pytest.raises(InputShapeError, match=r"float batch N x C x H x W.*torch.uint8"):
        RandomErasing()(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputShapeError, match=r"expects a batch N x C x H x W.*shape \(4, 4\)"):
        HorizontalFlip()(torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(InputShapeError, match=r"shape \(4, 4\)"):
        RandomCrop(1)(torch.zeros(4, 4))


@pytest.mark.parametrize("op", [RandomCrop(3), HorizontalFlip()], ids=["crop", "flip"])
def test_moves_on_uint8_equal_moves_on_float(op):
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    moved = op(images, generator(5))
    assert moved.dtype == torch.uint8
    assert torch.equal(moved.float(), op(images.float(), generator(5)))


def test_flip_mirrors_exactly_the_chosen_samples():
    x = distinct_batch(64)
    out = HorizontalFlip(0.5)(x, generator())
    mirrored = torch.flip(x, dims=[3])
    same = (out == x).flatten(1).all(1)
    flipped = (out == mirrored).flatten(1).all(1)
    assert bool((same ^ flipped).all()), "each sample is either itself or its mirror"
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(HorizontalFlip(1.0)(x, generator()), mirrored)
    assert torch.equal(HorizontalFlip(0.0)(x, generator()), x)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_crop_is_a_window_of_the_padded_image(mode):
    pad = 3
    x = distinct_batch(24, channels=2, size=10)
    out = RandomCrop(pad, mode)(x, generator())
    padded = F.pad(x, (pad,) * 4, mode="constant" if mode == "zero" else "reflect")
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 10])
        ]
        assert len(matches) == 1, f"sample {i} is no window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5, "the offsets vary from sample to sample"


def test_crop_offsets_are_bounded_by_the_padding():
    # Where a single bright pixel lands tells the offset: never more than `padding` away.
    pad = 2
    x = torch.zeros(200, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = RandomCrop(pad)(x, generator())
    inside = out.flatten(1).sum(1) == 1  # offsets up to 2 keep the centre pixel in view
    assert bool(inside.all())
    where = out.flatten(1).argmax(1)
    rows, cols = where // 9 - 4, where % 9 - 4
    assert int(rows.abs().max()) == pad and int(cols.abs().max()) == pad
    assert set(rows.tolist()) == set(range(-pad, pad + 1))


def test_crop_without_padding_is_the_identity_and_reflect_needs_room():
    x = torch.rand(2, 1, 5, 5)
    assert torch.equal(RandomCrop(0)(x, generator()), x)
    with pytest.raises(InputShapeError, match=r"reflect padding of 5 .* got 5x5"):
        RandomCrop(5, "reflect")(x, generator())
    with pytest.raises(CnnlabError, match="padding mode must be 'zero' or 'reflect'"):
        RandomCrop(2, "wrap")


def erased_masks(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (out != x).any(1)  # N x H x W


@pytest.mark.parametrize("fill", ["zero", "random"])
def test_erasing_fills_one_rectangle_of_bounded_area(fill):
    size, low, high = 40, 0.05, 0.2
    x = torch.rand(64, 3, size, size) + 1.0  # never 0, never equal to noise by chance
    out = RandomErasing(1.0, scale=(low, high), fill=fill)(x, generator())
    mask = erased_masks(x, out)
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :]), "a rectangle per sample"
    assert bool(mask.flatten(1).any(1).all()), "p=1 erases every sample"
    fraction = mask.flatten(1).float().mean(1)
    # Sides are rounded to whole pixels, hence the margin around [low, high].
    assert float(fraction.min()) >= 0.75 * low and float(fraction.max()) <= 1.25 * high
    if fill == "zero":
        assert bool((out[mask[:, None].expand_as(out)] == 0).all())
    assert torch.equal(out[~mask[:, None].expand_as(out)], x[~mask[:, None].expand_as(x)])


def test_erasing_probability_and_aspect_bounds():
    x = torch.rand(400, 1, 32, 32) + 1.0
    out = RandomErasing(0.25, scale=(0.1, 0.1), ratio=(1.0, 1.0), fill="zero")(x, generator())
    mask = erased_masks(x, out)
    erased = mask.flatten(1).any(1)
    assert 60 < int(erased.sum()) < 140  # 100 expected
    heights, widths = mask.any(2).sum(1)[erased], mask.any(1).sum(1)[erased]
    assert torch.equal(heights, widths), "ratio 1 gives squares"
    assert set(heights.tolist()) == {10}  # sqrt(0.1 * 1024) = 10.1, rounded
    assert torch.equal(RandomErasing(0.0)(x, generator()), x)


def test_erasing_places_rectangles_anywhere_they_fit():
    x = torch.rand(400, 1, 32, 32) + 1.0
    out = RandomErasing(1.0, scale=(0.1, 0.1), ratio=(1.0, 1.0), fill="zero")(x, generator())
    mask = erased_masks(x, out)
    tops = mask.any(2).float().argmax(1)
    lefts = mask.any(1).float().argmax(1)
    for corner in (tops, lefts):  # 10x10 squares: corners 0..22, each hit about 17 times
        assert int(corner.min()) == 0 and int(corner.max()) == 22
        assert len(set(corner.tolist())) == 23


def test_erasing_retries_rectangles_that_do_not_fit():
    # On 4x4 images many draws round a side to 0 pixels; further attempts find one that fits.
    x = torch.rand(400, 1, 4, 4) + 1.0
    out = RandomErasing(1.0, scale=(0.02, 0.1), fill="zero")(x, generator())
    assert float(erased_masks(x, out).flatten(1).any(1).float().mean()) > 0.97


def test_erasing_refuses_bad_settings():
    with pytest.raises(CnnlabError, match=r"probability must be in \[0, 1\], got 1.5"):
        RandomErasing(1.5)
    with pytest.raises(CnnlabError, match=r"area fractions .* got \(0.5, 0.2\)"):
        RandomErasing(scale=(0.5, 0.2))


def test_jitter_at_zero_strength_is_the_identity():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(ColorJitter(0, 0, 0)(x, generator()), x)


def test_jitter_brightness_scales_each_image_by_one_factor():
    x = torch.rand(32, 3, 8, 8) * 0.5 + 0.1  # no clamping at 1 + 0.4
    out = ColorJitter(0.4, 0, 0)(x, generator())
    ratio = out / x
    factor = ratio.flatten(1)[:, 0]
    assert torch.allclose(ratio, factor.view(-1, 1, 1, 1).expand_as(ratio), atol=1e-5)
    assert float(factor.min()) >= 0.6 and float(factor.max()) <= 1.4
    assert float(factor.std()) > 0.05


def test_jitter_contrast_keeps_the_mean_grey_and_saturation_keeps_greys():
    x = torch.rand(16, 3, 8, 8) * 0.2 + 0.4
    out = ColorJitter(0, 0.4, 0)(x, generator())
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    mean_grey = (x * luma).sum(1).mean((1, 2))
    assert torch.allclose((out * luma).sum(1).mean((1, 2)), mean_grey, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)
    greys = x[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(ColorJitter(0, 0, 0.8)(greys, generator()), greys, atol=1e-6)


def test_jitter_refuses_grey_batches():
    with pytest.raises(InputShapeError, match=r"RGB images \(3 channels\), got 1 channel"):
        ColorJitter()(torch.rand(2, 1, 8, 8), generator())


@pytest.mark.parametrize(("stored", "target"), [(28, 224), (28, 96), (64, 28), (28, 28)])
def test_resize_gives_the_exact_shape(stored, target):
    x = torch.rand(3, 2, stored, stored)
    out = resize(x, (target, target))
    assert out.shape == (3, 2, target, target)
    expected = F.interpolate(
        x, size=(target, target), mode="bilinear", align_corners=False, antialias=target < stored
    )
    assert torch.allclose(out, expected)


def test_resize_keeps_a_constant_image_constant():
    out = resize(torch.full((1, 1, 28, 28), 0.25), (224, 224))
    assert torch.allclose(out, torch.full_like(out, 0.25))
