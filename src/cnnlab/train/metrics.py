"""Classification metrics for training and evaluation.

`RunningMetrics` sums loss and correct predictions over an epoch on the device the logits live
on, so a training step never waits for the GPU to report a number; `result()` reads everything
back in a single transfer, and `sum_across` adds up the ranks' sums in a distributed job.
`confusion_matrix`, `per_class_accuracy` and `top_k` serve the final evaluation and
`cnnlab predict`.
"""

from __future__ import annotations

import math

import torch

from cnnlab.errors import CnnlabError, InputShapeError


class RunningMetrics:
    """Mean loss and top-1 accuracy accumulated over batches without a host sync per batch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._loss_sum: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self.count = 0  # known on the host from tensor shapes, so counting never syncs

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: `loss_sum` is the sum (not the mean) of its per-sample losses, `logits`
        is N x classes and `labels` holds the N true classes."""
        if logits.dim() != 2 or labels.shape != logits.shape[:1]:
            raise InputShapeError(
                f"metrics expect logits N x classes and N labels, got logits "
                f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
            )
        device = logits.device
        if self._loss_sum is None:
            # float64 so that thousands of batch sums add up without visible rounding.
            self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            self._correct = torch.zeros((), dtype=torch.int64, device=device)
        predictions = logits.detach().argmax(dim=1)
        labels = labels.to(device, non_blocking=True)
        self._loss_sum += loss_sum.detach().to(device, torch.float64)
        self._correct += (predictions == labels).sum()
        self.count += labels.numel()

    def state(self) -> dict:
        """The sums so far as plain numbers (JSON), for a checkpoint taken mid-epoch."""
        if self.count == 0:
            return {"loss_sum": 0.0, "correct": 0, "count": 0}
        return {
            "loss_sum": float(self._loss_sum),
            "correct": int(self._correct),
            "count": self.count,
        }

    def load_state(self, state: dict, device: torch.device | str = "cpu") -> None:
        """Continue from `state()`: the sums of the batches seen before a resume."""
        self._loss_sum = torch.tensor(float(state["loss_sum"]), dtype=torch.float64, device=device)
        self._correct = torch.tensor(int(state["correct"]), dtype=torch.int64, device=device)
        self.count = int(state["count"])

    def sum_across(self, total, device: torch.device | str = "cpu") -> None:
        """Replace the sums by `total(sums)`, a function summing a float64 tensor over the ranks
        of a distributed job (see train/distributed.py): then they count every rank's batches.
        One collective; a single process's `total` returns the tensor as it is."""
        state = self.state()
        sums = [state["loss_sum"], state["correct"], state["count"]]
        summed = total(torch.tensor(sums, dtype=torch.float64, device=device))
        loss_sum, correct, count = summed.tolist()
        self.load_state(
            {"loss_sum": loss_sum, "correct": int(correct), "count": int(count)}, device
        )

    def result(self) -> dict:
        """{"loss": mean loss, "acc": top-1 accuracy, "count": samples}; NaN loss and accuracy
        when no sample was seen. Reads the device once."""
        if self.count == 0:
            return {"loss": math.nan, "acc": math.nan, "count": 0}
        loss_sum, correct = torch.stack([self._loss_sum, self._correct.double()]).tolist()
        return {"loss": loss_sum / self.count, "acc": correct / self.count, "count": self.count}


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """int64 num_classes x num_classes counts: row = true class, column = predicted class."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise CnnlabError(f"number of classes must be a whole number >= 1, got {num_classes!r}")
    if predictions.shape != labels.shape or predictions.dim() != 1:
        raise InputShapeError(
            f"confusion matrix needs predictions and labels of the same length N, got shapes "
            f"{tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    predictions = predictions.to(labels.device).long()
    _check_classes("labels", labels, num_classes)
    _check_classes("predictions", predictions, num_classes)
    # Each (true, predicted) pair becomes one flat cell index, counted in a single bincount.
    cells = labels * num_classes + predictions
    counts = torch.bincount(cells, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """float64 accuracy of every true class (diagonal / row sum) from a confusion matrix; NaN
    for a class with no samples, which has no accuracy (0 would read as "always wrong")."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise InputShapeError(
            f"per-class accuracy needs a square confusion matrix, got shape "
            f"{tuple(confusion.shape)}"
        )
    confusion = confusion.double()
    return confusion.diagonal() / confusion.sum(dim=1)


def top_k(probabilities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest probabilities and their class indices along the last dimension, highest
    first; k larger than the number of classes is cut down to it."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnnlabError(f"top-k needs k to be a whole number >= 1, got {k!r}")
    if probabilities.dim() == 0 or probabilities.shape[-1] == 0:
        raise InputShapeError(
            f"top-k needs probabilities over at least one class, got shape "
            f"{tuple(probabilities.shape)}"
        )
    values, indices = torch.topk(probabilities, min(k, probabilities.shape[-1]), dim=-1)
    return values, indices


def _check_classes(what: str, classes: torch.Tensor, num_classes: int) -> None:
    if classes.numel() == 0:
        return
    low, high = classes.min().item(), classes.max().item()
    if low < 0 or high >= num_classes:
        raise CnnlabError(
            f"confusion matrix: {what} must be class indices in 0..{num_classes - 1}, "
            f"found values from {low} to {high}"
        )
