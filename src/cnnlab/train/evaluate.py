"""Evaluation of a model on a dataset: loss, accuracy, the confusion matrix, per-class accuracy."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.train.metrics import RunningMetrics, confusion_matrix, per_class_accuracy


@dataclass
class Evaluation:
    loss: float
    acc: float
    count: int
    confusion: torch.Tensor  # int64 classes x classes, rows true, columns predicted

    @property
    def per_class(self) -> torch.Tensor:
        return per_class_accuracy(self.confusion)

    def to_dict(self, classes: list[str]) -> dict:
        return {
            "loss": self.loss,
            "acc": self.acc,
            "count": self.count,
            "per_class_acc": {
                name: None if acc != acc else round(float(acc), 6)  # NaN: no samples
                for name, acc in zip(classes, self.per_class.tolist(), strict=True)
            },
            "confusion": self.confusion.tolist(),
        }


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass: bf16 or fp16 where asked, else nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
    tta: str = "none",
    total=None,
) -> Evaluation:
    """Mean cross-entropy and accuracy over `batches` (an iterable of (images, labels)), with the
    model in eval mode (dropout off, BatchNorm on its running statistics); the model's modes are
    restored afterwards. `tta="flip"` scores each image by the mean of its logits and those of
    its mirror image (test-time augmentation). In a distributed job, where each rank evaluates
    its part of the data, `total` sums a tensor over the ranks (see train/distributed.py), so
    that every rank gets the evaluation of the whole."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    metrics = RunningMetrics()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    try:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            with autocast(device, precision):
                logits = model(images).float()
                if tta == "flip":
                    logits = (logits + model(images.flip(3)).float()) / 2
            metrics.update(F.cross_entropy(logits, labels, reduction="sum"), logits, labels)
            confusion += confusion_matrix(logits.argmax(1), labels, num_classes)
    finally:
        for module, training in modes.items():
            module.training = training
    if total is not None:
        metrics.sum_across(total, device)
        confusion = total(confusion)
    result = metrics.result()
    return Evaluation(result["loss"], result["acc"], result["count"], confusion.cpu())
