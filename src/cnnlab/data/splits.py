"""Seeded, stratified splits of a training set, and the tools for imbalanced classes.

The validation data for model selection comes out of the training set (the test set is never
touched for it), keeping each class's share:

- `stratified_split(labels, val_fraction, seed)`: every class gives `val_fraction` of its
  samples, rounded half up, to validation; a class with at least 2 samples gives at least 1
  and keeps at least 1 for training, a class with a single sample keeps it for training.
- `name_split(names, labels, fraction)`: a held-out split decided by each file's name (a hash
  of it), so that adding or removing other files never moves a file between the splits; every
  class with at least 2 files keeps at least 1 on each side. It gives an image folder without
  split folders its fixed test split.
- `stratified_kfold(labels, k, seed)`: every sample is in exactly one validation fold; within a
  class, fold sizes differ by at most 1 (and so do the folds' total sizes).

For imbalance: `class_weights` for the loss (inverse class frequency, as scikit-learn's
"balanced" weights) and `ClassBalancedSampler`, which draws indices so that each class appears
equally often in expectation.

Everything is deterministic given its seed (and epoch). Seeds go through NumPy's
`SeedSequence`, with a spawn key per use and epoch, so that different uses of one seed and
neighbouring seeds give unrelated random streams. Indices are int64 tensors on the CPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from cnnlab.errors import CnnlabError, DataError

# Spawn keys that keep the random streams of different uses of one seed apart.
SPLIT_STREAM = 1
SAMPLER_STREAM = 2
ORDER_STREAM = 3
AUGMENT_STREAM = 4

# torch.multinomial draws from at most 2**24 categories.
MULTINOMIAL_LIMIT = 2**24


def seeded_generator(seed: int, *stream: int, device: str | torch.device = "cpu"):
    """A `torch.Generator` on `device` whose state depends only on `seed` and `stream` (e.g. a
    use and an epoch)."""
    if seed < 0:
        raise CnnlabError(f"a seed must be a non-negative integer, got {seed}")
    state = np.random.SeedSequence(seed, spawn_key=stream).generate_state(1, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0]))


def as_labels(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor of non-negative class indices."""
    labels = torch.as_tensor(labels).cpu()
    if labels.numel() == 0:
        raise DataError("labels are empty: nothing to split or weigh")
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise DataError(
            f"labels must be a 1-D tensor of integer class indices, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    labels = labels.long()
    if int(labels.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(labels.min())}")
    return labels


def grouped_by_class(labels: torch.Tensor, seed: int):
    """All indices, grouped by class in increasing class order, each class in a seeded random
    order; with each position's rank inside its class and the class counts."""
    shuffled = torch.randperm(len(labels), generator=seeded_generator(seed, SPLIT_STREAM))
    order = shuffled[torch.argsort(labels[shuffled], stable=True)]
    counts = torch.bincount(labels)
    class_starts = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[order]
    rank = torch.arange(len(labels)) - class_starts[sorted_labels]
    return order, sorted_labels, rank, counts


def stratified_split(
    labels: Sequence[int] | torch.Tensor, val_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), each sorted, with every class split in proportion.

    Each class gives round(val_fraction * count) samples (half up) to validation, clamped to
    [1, count - 1] when it has at least 2 samples; a class of 1 sample stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise CnnlabError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    labels = as_labels(labels)
    order, sorted_labels, rank, counts = grouped_by_class(labels, seed)
    val_counts = torch.floor(counts.double() * val_fraction + 0.5).long()
    splittable = counts >= 2
    val_counts = torch.where(
        splittable, val_counts.clamp(min=1).minimum(counts - 1), torch.zeros_like(counts)
    )
    in_val = rank < val_counts[sorted_labels]
    return order[~in_val].sort().values, order[in_val].sort().values


def name_split(
    names: Sequence[str], labels: Sequence[int] | torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices, held-out indices), each sorted: a file is held out when the hash of its
    name falls in the lowest `fraction` of the range (about `fraction` of every class)."""
    labels = as_labels(labels)
    points = [_hash_point(name) for name in names]
    held = [point < fraction for point in points]
    for label in labels.unique().tolist():
        members = [i for i in range(len(names)) if labels[i] == label]
        if len(members) < 2:
            continue
        if not any(held[i] for i in members):  # the lowest point goes, the highest stays
            held[min(members, key=points.__getitem__)] = True
        if all(held[i] for i in members):
            held[max(members, key=points.__getitem__)] = False
    kept = [i for i, out in enumerate(held) if not out]
    return torch.tensor(kept, dtype=torch.long), torch.tensor(
        [i for i, out in enumerate(held) if out], dtype=torch.long
    )


def _hash_point(name: str) -> float:
    """A point in [0, 1) fixed by `name` (any string, even one holding undecodable bytes)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stratified_kfold(
    labels: Sequence[int] | torch.Tensor, k: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k pairs (train indices, validation indices), each sorted; every sample is in exactly one
    validation fold, and each class is dealt round-robin over the folds so that its count per
    fold differs by at most 1. A class with fewer than k samples is missing from some folds."""
    labels = as_labels(labels)
    if not 2 <= k <= len(labels):
        raise CnnlabError(f"k-fold needs 2 <= k <= number of samples ({len(labels)}), got k={k}")
    order, _, _, _ = grouped_by_class(labels, seed)
    # Dealing the class-grouped order round-robin also carries each class's start over from
    # where the previous class ended, so the folds' totals differ by at most 1 too.
    fold = torch.empty(len(labels), dtype=torch.long)
    fold[order] = torch.arange(len(labels)) % k
    return [
        (torch.nonzero(fold != f).squeeze(1), torch.nonzero(fold == f).squeeze(1)) for f in range(k)
    ]


def class_weights(labels: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class loss weights, float32 of length num_classes: n / (present classes * count),
    so that the mean weight over the samples is 1. A class with no samples gets weight 0 (it
    cannot occur in the loss, and 0 keeps the vector finite)."""
    labels = as_labels(labels)
    if int(labels.max()) >= num_classes:
        raise DataError(
            f"labels must be < num_classes={num_classes}, found label {int(labels.max())}"
        )
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(labels) / (present * counts), torch.zeros_like(counts))
    return weights.float()


class ClassBalancedSampler:
    """Draws `num_samples` indices per epoch, with replacement, each sample weighted by 1 / its
    class count, so that every present class appears equally often in expectation.

    `indices(epoch)` is deterministic given the seed and the epoch; loaders call it once per
    epoch in place of their permutation.
    """

    def __init__(
        self, labels: Sequence[int] | torch.Tensor, num_samples: int | None = None, seed: int = 0
    ):
        labels = as_labels(labels)
        if len(labels) > MULTINOMIAL_LIMIT:
            raise DataError(
                f"the class-balanced sampler draws with torch.multinomial, which takes at most "
                f"{MULTINOMIAL_LIMIT} samples; got {len(labels)}"
            )
        self.num_samples = len(labels) if num_samples is None else num_samples
        if self.num_samples < 1:
            raise CnnlabError(f"the sampler must draw at least 1 sample, got {num_samples}")
        self.population = len(labels)
        self.seed = seed
        counts = torch.bincount(labels).double()
        self.weights = 1.0 / counts[labels]

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> torch.Tensor:
        generator = seeded_generator(self.seed, SAMPLER_STREAM, epoch)
        return torch.multinomial(self.weights, self.num_samples, True, generator=generator)
