"""The batch pipeline: its stage order and normalisation, reproducibility, the `--augment`
names, and batches drawn already cropped and flipped."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import AUGMENTATIONS, BatchPipeline, MovedBatches, parse_augmentations
from cnnlab.data.augment_ops import ColorJitter, HorizontalFlip, RandomCrop, RandomErasing
from cnnlab.errors import CnnlabError, InputShapeError


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_batch(n=8, channels=1, size=28, seed=0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def test_pipeline_normalises_per_channel():
    images = uint8_batch(channels=3, size=6)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = BatchPipeline(mean, std)(images)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-6)


def test_pipeline_resizes_after_pixel_ops_and_erases_after_normalising():
    images = torch.full((16, 1, 28, 28), 255, dtype=torch.uint8)
    mean, std = 0.5, 0.25
    crop = BatchPipeline([mean], [std], size=56, train_ops=[RandomCrop(4)])(images, generator())
    assert crop.shape == (16, 1, 56, 56)
    assert torch.isclose(crop.min(), torch.tensor(-mean / std)), "zero padding is black"
    erase = BatchPipeline([mean], [std], train_ops=[RandomErasing(1.0, fill="zero")])
    out = erase(images, generator())
    assert torch.equal(torch.unique(out), torch.tensor([0.0, (1 - mean) / std])), (
        "erased pixels hold the dataset mean, 0 after normalising"
    )


def test_pipeline_for_eval_drops_augmentation():
    pipeline = BatchPipeline([0.5], [0.5], size=32, train_ops=parse_augmentations("crop,flip"))
    images = uint8_batch()
    evaluation = pipeline.for_eval()
    assert evaluation.train_ops == () and evaluation.size == (32, 32)
    assert torch.equal(evaluation(images), evaluation(images))
    assert not torch.equal(pipeline(images, generator(0)), evaluation(images))


def test_pipeline_reproduces_with_a_seed():
    pipeline = BatchPipeline([0.3], [0.3], train_ops=parse_augmentations("crop,flip,erase"))
    images = uint8_batch(64)
    first = pipeline(images, generator(5))
    assert torch.equal(first, pipeline(images, generator(5)))
    assert not torch.equal(first, pipeline(images, generator(6)))


def test_pipeline_refuses_mismatched_inputs():
    with pytest.raises(InputShapeError, match=r"uint8 images N x C x H x W, got torch.float32"):
        BatchPipeline([0.5], [0.5])(torch.rand(2, 1, 4, 4))
    with pytest.raises(InputShapeError, match=r"for 3 channel\(s\), the batch has 1"):
        BatchPipeline([0.5] * 3, [0.5] * 3)(uint8_batch(size=4))
    with pytest.raises(CnnlabError, match=r"std must be > 0, got \[0.0\]"):
        BatchPipeline([0.5], [0.0])
    with pytest.raises(CnnlabError, match="got 2 means and 1 stds"):
        BatchPipeline([0.5, 0.5], [0.5])


def test_parse_augmentations_names():
    ops = parse_augmentations(" Crop, flip,erase ,jitter")
    assert [type(op) for op in ops] == [RandomCrop, HorizontalFlip, RandomErasing, ColorJitter]
    assert parse_augmentations("") == [] and parse_augmentations("none") == []
    assert parse_augmentations(None) == []
    assert parse_augmentations("crop-reflect")[0].mode == "reflect"
    assert parse_augmentations("erase-random")[0].fill == "random"
    for name, (factory, description) in AUGMENTATIONS.items():
        assert callable(factory) and description, name


def test_parse_augmentations_refuses_unknown_names_listing_the_known():
    with pytest.raises(CnnlabError, match=r"unknown augmentation\(s\) blur, mixup .*known: crop"):
        parse_augmentations("crop,blur,mixup")


def test_moved_batches_equal_explicit_crop_and_flip():
    images = torch.randint(0, 256, (20, 3, 6, 5), dtype=torch.uint8)
    pipeline = BatchPipeline([0.5] * 3, [0.5] * 3, train_ops=parse_augmentations("crop,flip"))
    moved = MovedBatches.for_pipeline(images, pipeline)
    indices = torch.tensor([3, 0, 19, 3, 7])
    out = moved(indices, generator(9))
    draws = generator(9)
    offsets = torch.randint(0, 9, (2, 5), generator=draws)
    flips = torch.rand(5, generator=draws) < 0.5
    padded = F.pad(images, (4, 4, 4, 4))
    for k, index in enumerate(indices.tolist()):
        top, left = offsets[0, k].item(), offsets[1, k].item()
        if flips[k]:  # the window is taken from the mirrored image: its offset mirrors too
            left = 8 - left
        window = padded[index, :, top : top + 6, left : left + 5]
        expected = window.flip(2) if flips[k] else window
        assert torch.equal(out[k], expected), k
    assert 0 < int(flips.sum()) < 5


def test_moved_batches_only_for_plain_crop_and_flip():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    for spec, applies in [
        ("crop", True),
        ("flip", True),
        ("flip,crop", True),
        ("crop-reflect,flip", False),
        ("crop,crop", False),
        ("erase", False),
        ("none", False),
    ]:
        pipeline = BatchPipeline([0.5], [0.5], train_ops=parse_augmentations(spec))
        assert (MovedBatches.for_pipeline(images, pipeline) is not None) == applies, spec
