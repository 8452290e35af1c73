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
        """Per-channel mean and standard deviation in [0, 1] units, exact, from each channel's
        histogram of the 256 pixel values (counting is far cheaper than a float copy)."""
        values = torch.arange(256, dtype=torch.float64) / 255.0
        means, stds = [], []
        for channel in range(self.images.shape[1]):
            counts = torch.bincount(self.images[:, channel].reshape(-1), minlength=256)
            weights = counts.double() / counts.sum()
            mean = (weights * values).sum()
            means.append(mean)
            stds.append(((weights * values * values).sum() - mean * mean).clamp_min(0).sqrt())
        return torch.stack(means).float(), torch.stack(stds).float()
