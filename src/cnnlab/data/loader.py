"""Batches for training and evaluation: from uint8 images to normalised, augmented floats.

`InMemoryLoader` holds a whole dataset as one uint8 tensor on the training device (moved there
once) and draws batches by a seeded permutation per epoch; each batch is indexed out as uint8
and converted, resized, normalised and augmented by a `BatchPipeline` on the device, so that
the dataset never exists in float and no per-sample Python runs on the hot path. With random
crop and flip, drawing, cropping and flipping a batch is a single indexing op
(`augment.MovedBatches`, at the cost of a padded copy of the images).

`StreamingLoader` serves image folders too large to hold: a `torch.utils.data.DataLoader` with
worker processes reads a Dataset of (uint8 C x H x W tensor, label) pairs, collates uint8
batches (pinned when the device is CUDA), and the same batched pipeline runs on the device.

Both follow the same epoch rule: iterating uses the current epoch and then advances it, and
`set_epoch(e)` chooses the next one (e.g. when resuming). The order of an epoch depends only on
`seed` and the epoch (drawn on the CPU, so it is the same on every device); the augmentation of
an epoch draws from its own generator on the device, seeded from `seed` and the epoch too. A
sampler such as `splits.ClassBalancedSampler` (any object with `indices(epoch)` and `len()`)
replaces the permutation. Without a pipeline, batches are floats in [0, 1].

An `InMemoryLoader` with `shard=(rank, ranks)` serves one of several processes training
together (train/distributed.py): `batch_size` is then the global batch, and each batch it
yields is this rank's contiguous part of the global batch one process would get (parts as even
as possible; a rank whose part is empty gets nothing for that batch), so `len()` and batch
positions count global batches. Rank r > 0 augments from a stream seeded by (seed, epoch, r);
rank 0 from the single process's.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.augment import BatchPipeline, MovedBatches
from cnnlab.data.splits import AUGMENT_STREAM, ORDER_STREAM, seeded_generator
from cnnlab.errors import CnnlabError, DataError


class EpochOrder(Sampler):
    """The order of the samples in each epoch: sequential, a seeded permutation, or what a
    sampler draws. Also a torch `Sampler`, for the DataLoader of `StreamingLoader`."""

    def __init__(self, size: int, shuffle: bool, seed: int, sampler=None):
        self.size, self.shuffle, self.seed, self.sampler = size, shuffle, seed, sampler
        self.epoch = 0  # the one a DataLoader iterating this sampler gets

    def __len__(self) -> int:
        return self.size if self.sampler is None else len(self.sampler)

    def indices(self, epoch: int) -> torch.Tensor | None:
        """This epoch's indices (CPU int64), or None for the plain order 0..size-1."""
        if self.sampler is not None:
            indices = torch.as_tensor(self.sampler.indices(epoch), dtype=torch.long).cpu()
            if len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < self.size:
                raise DataError(
                    f"the sampler drew indices in [{int(indices.min())}, {int(indices.max())}] "
                    f"for a dataset of {self.size} samples"
                )
            return indices
        if self.shuffle:
            return torch.randperm(
                self.size, generator=seeded_generator(self.seed, ORDER_STREAM, epoch)
            )
        return None

    def __iter__(self):
        indices = self.indices(self.epoch)
        return iter(range(self.size) if indices is None else indices.tolist())


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise CnnlabError(f"the batch size must be at least 1, got {batch_size}")


def prepare(images: torch.Tensor, pipeline: BatchPipeline | None, generator) -> torch.Tensor:
    if pipeline is None:
        return images.to(torch.float32).div_(255.0)
    return pipeline(images, generator)


class InMemoryLoader:
    """Batches of (float images, int64 labels) from a uint8 N x C x H x W tensor held on
    `device`; `len()` is the number of batches per epoch."""

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        pipeline: BatchPipeline | None = None,
        sampler=None,
        shard: tuple[int, int] = (0, 1),
    ):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise DataError(
                f"the in-memory loader takes uint8 images N x C x H x W, got "
                f"{images_uint8.dtype} of shape {tuple(images_uint8.shape)}"
            )
        if labels.dim() != 1 or len(labels) != len(images_uint8):
            raise DataError(
                f"expected one label per image ({len(images_uint8)}), got labels of shape "
                f"{tuple(labels.shape)}"
            )
        check_batch_size(batch_size)
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.pipeline = pipeline
        self.moved = MovedBatches.for_pipeline(self.images, pipeline)
        self.order = EpochOrder(len(labels), shuffle, seed, sampler)
        self.shard = shard
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(len(self.order) / self.batch_size)

    def global_size(self, index: int) -> int:
        """How many images global batch `index` holds, over all ranks."""
        return min(self.batch_size, len(self.order) - index * self.batch_size)

    def part(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's positions of the global batch start..stop."""
        rank, ranks = self.shard
        size = stop - start
        return start + rank * size // ranks, start + (rank + 1) * size // ranks

    def __iter__(self):
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch_batches(epoch)

    def epoch_batches(self, epoch: int, start: int = 0, augment_state: torch.Tensor | None = None):
        """The batches of `epoch` from batch number `start` on. While it runs,
        `self.augment_generator` draws the augmentation; its state (`get_state()`) saved after
        batch k, given back as `augment_state` with `start=k+1`, resumes the epoch exactly."""
        indices = self.order.indices(epoch)
        if indices is not None:
            indices = indices.to(self.device)
        self.augment_generator = None
        if self.pipeline is not None and self.pipeline.train_ops:
            rank = self.shard[0]
            stream = (AUGMENT_STREAM, epoch, rank) if rank else (AUGMENT_STREAM, epoch)
            self.augment_generator = seeded_generator(self.seed, *stream, device=self.device)
            if augment_state is not None:
                self.augment_generator.set_state(augment_state)
        for first in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            low, high = self.part(first, min(first + self.batch_size, len(self.order)))
            if low < high:
                yield self.batch(low, high, indices, self.augment_generator)

    def batch(self, start: int, stop: int, indices: torch.Tensor | None, generator):
        """Positions start..stop of the epoch's order, as (float images, labels)."""
        if indices is None and self.moved is None:  # sequential: slices are views, no gather
            images = prepare(self.images[start:stop], self.pipeline, generator)
            return images, self.labels[start:stop]
        if indices is None:
            batch = torch.arange(start, stop, device=self.device)
        else:
            batch = indices[start:stop]
        if self.moved is not None:  # draw, crop and flip in one indexing op
            images = self.pipeline.finish(self.moved(batch, generator), generator)
        else:
            images = prepare(self.images.index_select(0, batch), self.pipeline, generator)
        return images, self.labels[batch]


def collate_uint8(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (uint8 C x H x W image, label) pairs into a uint8 batch and int64 labels."""
    images, labels = zip(*samples, strict=True)
    kinds = {(image.dtype, tuple(image.shape)) for image in images}
    if len(kinds) != 1 or next(iter(kinds))[0] != torch.uint8:
        found = ", ".join(sorted(f"{dtype} {shape}" for dtype, shape in kinds))
        raise DataError(
            f"a streamed batch needs uint8 images of one shape C x H x W, found: {found}"
        )
    return torch.stack(images), torch.tensor([int(label) for label in labels], dtype=torch.long)


class StreamingLoader:
    """Batches of (float images, int64 labels) from a Dataset of (uint8 C x H x W, label) read
    by `num_workers` processes; `len()` is the number of batches per epoch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        pipeline: BatchPipeline | None = None,
        sampler=None,
    ):
        check_batch_size(batch_size)
        self.device = torch.device(device)
        self.seed, self.pipeline = seed, pipeline
        self.order = EpochOrder(len(dataset), shuffle, seed, sampler)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.order,  # read each epoch in the main process, after set_epoch
            num_workers=num_workers,
            collate_fn=collate_uint8,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
        )
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch = self.next_epoch
        self.next_epoch += 1
        self.order.epoch = epoch  # before the DataLoader asks its sampler for the order
        generator = None
        if self.pipeline is not None and self.pipeline.train_ops:
            generator = seeded_generator(self.seed, AUGMENT_STREAM, epoch, device=self.device)
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            yield prepare(images, self.pipeline, generator), labels
