"""The in-memory and streaming loaders: every index once per epoch, seeded orders per epoch,
batch counts, the pipeline applied on the device, samplers, and refused inputs."""

import pytest
import torch
from torch.utils.data import Dataset

from cnnlab.data.augment import BatchPipeline, parse_augmentations
from cnnlab.data.loader import InMemoryLoader, StreamingLoader, collate_uint8
from cnnlab.data.splits import ClassBalancedSampler
from cnnlab.errors import CnnlabError, DataError

N = 103  # not a multiple of the batch size


def indexed_images(n: int = N, size: int = 6) -> torch.Tensor:
    """Image i is filled with the value i, so a batch says which samples it holds."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).clone()


def epoch_labels(loader) -> torch.Tensor:
    return torch.cat([labels for _, labels in loader])


def in_memory(**options) -> InMemoryLoader:
    options.setdefault("batch_size", 10)
    return InMemoryLoader(indexed_images(), torch.arange(N), **options)


def test_batches_hold_matching_floats_and_labels():
    loader = in_memory()
    sizes = []
    for images, labels in loader:
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 6, 6)
        assert torch.equal((images[:, 0, 0, 0] * 255).round().long(), labels)
        sizes.append(len(labels))
    assert len(loader) == 11 and sizes == [10] * 10 + [3]


def test_the_dataset_is_held_once_as_uint8():
    loader = in_memory()
    assert loader.images.dtype == torch.uint8 and loader.images.device.type == "cpu"


def test_each_index_once_per_epoch_in_a_new_order():
    loader = in_memory()
    first, second = epoch_labels(loader), epoch_labels(loader)
    for order in (first, second):
        assert torch.equal(order.sort().values, torch.arange(N))
    assert not torch.equal(first, second)
    assert not torch.equal(first, torch.arange(N))


def test_orders_depend_only_on_seed_and_epoch():
    a, b = in_memory(seed=3), in_memory(seed=3)
    assert torch.equal(epoch_labels(a), epoch_labels(b))
    assert torch.equal(epoch_labels(a), epoch_labels(b))
    assert not torch.equal(epoch_labels(in_memory(seed=3)), epoch_labels(in_memory(seed=4)))
    epochs = [epoch_labels(a) for _ in range(3)]  # epochs 2, 3, 4
    a.set_epoch(3)
    assert torch.equal(epoch_labels(a), epochs[1])


def test_without_shuffle_the_order_is_the_stored_one():
    assert torch.equal(epoch_labels(in_memory(shuffle=False)), torch.arange(N))


def test_drop_last_keeps_full_batches_only():
    loader = in_memory(drop_last=True)
    assert len(loader) == 10
    assert [len(labels) for _, labels in loader] == [10] * 10


def test_the_pipeline_normalises_and_augments_reproducibly():
    pipeline = BatchPipeline([0.2], [0.4], size=8, train_ops=parse_augmentations("crop,flip"))
    a = in_memory(pipeline=pipeline, seed=1)
    b = in_memory(pipeline=pipeline, seed=1)
    batches_a, batches_b = list(a), list(b)
    assert batches_a[0][0].shape == (10, 1, 8, 8)
    for (images_a, labels_a), (images_b, labels_b) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    evaluation = in_memory(pipeline=pipeline.for_eval(), shuffle=False)
    images, labels = next(iter(evaluation))
    expected = (labels.float().view(-1, 1, 1, 1) / 255 - 0.2) / 0.4
    assert torch.allclose(images, expected.expand(-1, 1, 8, 8), atol=1e-6)


def test_augmentation_differs_between_epochs_of_the_same_order():
    pipeline = BatchPipeline([0.5], [0.5], train_ops=parse_augmentations("erase"))
    loader = InMemoryLoader(
        torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8),
        torch.zeros(64, dtype=torch.long),
        batch_size=64,
        shuffle=False,
        pipeline=pipeline,
    )
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    assert not torch.equal(first, second)
    loader.set_epoch(0)
    assert torch.equal(next(iter(loader))[0], first)


def test_a_sampler_replaces_the_permutation():
    labels = torch.tensor([0] * 90 + [1] * 13)
    sampler = ClassBalancedSampler(labels, num_samples=40, seed=2)
    loader = InMemoryLoader(indexed_images(), labels, batch_size=16, sampler=sampler)
    assert len(loader) == 3
    drawn = torch.cat([(images[:, 0, 0, 0] * 255).round().long() for images, _ in loader])
    assert torch.equal(drawn, sampler.indices(0))
    assert torch.equal(epoch_labels(loader), labels[sampler.indices(1)])


def test_a_sampler_drawing_outside_the_dataset_is_refused():
    class Wrong:
        def __len__(self):
            return 5

        def indices(self, epoch):
            return torch.tensor([0, 1, 2, 3, 500])

    with pytest.raises(DataError, match=r"indices in \[0, 500\] for a dataset of 103 samples"):
        next(iter(in_memory(sampler=Wrong())))


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match=r"uint8 images N x C x H x W, got torch.float32"):
        InMemoryLoader(torch.rand(4, 1, 2, 2), torch.zeros(4), batch_size=2)
    with pytest.raises(DataError, match=r"one label per image \(4\), got labels of shape \(3,\)"):
        InMemoryLoader(indexed_images(4), torch.zeros(3), batch_size=2)
    with pytest.raises(CnnlabError, match="batch size must be at least 1, got 0"):
        in_memory(batch_size=0)


class IndexedImages(Dataset):
    """A tiny stand-in for an image folder: (uint8 1 x 6 x 6 filled with i, label i)."""

    def __init__(self, n: int = N):
        self.images = indexed_images(n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_matches_the_in_memory_order(workers):
    stream = StreamingLoader(IndexedImages(), batch_size=10, num_workers=workers, seed=5)
    memory = in_memory(seed=5)
    assert len(stream) == len(memory) == 11
    for _ in range(2):
        batches = list(stream)
        assert torch.equal(torch.cat([labels for _, labels in batches]), epoch_labels(memory))
        for images, labels in batches:
            assert images.dtype == torch.float32 and labels.dtype == torch.int64
            assert torch.equal((images[:, 0, 0, 0] * 255).round().long(), labels)
    stream.set_epoch(0)
    memory.set_epoch(0)
    assert torch.equal(epoch_labels(stream), epoch_labels(memory))


def test_streaming_applies_the_pipeline():
    pipeline = BatchPipeline([0.5], [0.5], size=12, train_ops=parse_augmentations("flip"))
    stream = StreamingLoader(IndexedImages(), batch_size=32, pipeline=pipeline, drop_last=True)
    batches = list(stream)
    assert len(batches) == len(stream) == 3
    images, labels = batches[0]
    assert images.shape == (32, 1, 12, 12)
    assert torch.allclose(images[:, 0, 0, 0], (labels.float() / 255 - 0.5) / 0.5, atol=1e-6)


def test_collate_refuses_mixed_images():
    same = [(torch.zeros(1, 4, 4, dtype=torch.uint8), 0)] * 2
    images, labels = collate_uint8(same)
    assert images.shape == (2, 1, 4, 4) and labels.tolist() == [0, 0]
    mixed = [same[0], (torch.zeros(1, 5, 4, dtype=torch.uint8), 1)]
    with pytest.raises(DataError, match=r"one shape C x H x W, found: .*\(1, 4, 4\).*\(1, 5, 4\)"):
        collate_uint8(mixed)
    with pytest.raises(DataError, match=r"found: torch.float32 \(1, 4, 4\)"):
        collate_uint8([(torch.zeros(1, 4, 4), 0)])


def test_epoch_resumes_mid_way_with_the_augmentation_state():
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50) % 5
    pipeline = BatchPipeline([0.5], [0.5], train_ops=parse_augmentations("crop,flip,erase"))
    loader = InMemoryLoader(images, labels, 8, seed=3, pipeline=pipeline)
    straight = list(loader.epoch_batches(2))
    interrupted = loader.epoch_batches(2)
    for _ in range(3):
        next(interrupted)
    state = loader.augment_generator.get_state()
    resumed = list(loader.epoch_batches(2, start=3, augment_state=state))
    assert len(resumed) == len(straight) - 3
    for (x, y), (x2, y2) in zip(straight[3:], resumed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
