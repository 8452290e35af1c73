"""The in-memory form of every dataset: uint8 images N x C x H x W, int64 labels, class names."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """One split of a dataset, held in memory."""

    name: str  # e.g. "fashion-mnist/train"
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, indices: torch.Tensor, name: str | None = None) -> ImageSet:
        return ImageSet(name or self.name, self.images[indices], self.labels[indices], self.classes)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(self.classes))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation in [0, 1] units, in float64 chunks so that
        60,000 images need no float copy of the whole set."""
        channels = self.images.shape[1]
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        for chunk in self.images.split(8192):
            values = chunk.to(torch.float64).transpose(0, 1).reshape(channels, -1) / 255.0
            total += values.sum(1)
            squares += (values * values).sum(1)
        count = self.images.numel() // channels
        mean = total / count
        return mean.float(), (squares / count - mean * mean).clamp_min(0).sqrt().float()
