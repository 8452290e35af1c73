"""Training a scratch network on a real dataset: mini-batch SGD written out in NumPy.

The loop is the one every framework hides: shuffle, slice a batch, normalise it, forward,
softmax cross-entropy, backward, optimiser step; then evaluate in eval mode (BatchNorm on its
running statistics). Images come from cnnlab's dataset readers (uint8), normalised with the
training set's mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnlab.data import load_dataset
from cnnlab.scratch.losses import softmax_cross_entropy
from cnnlab.scratch.network import Sequential
from cnnlab.scratch.optim import SGD


@dataclass
class ScratchData:
    train_images: np.ndarray  # uint8 N x C x H x W
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: float
    std: float


def load_scratch_data(dataset: str = "fashion-mnist", root=None, download=True) -> ScratchData:
    train = load_dataset(dataset, "train", root=root, download=download, progress=False)
    test = load_dataset(dataset, "test", root=root, download=download, progress=False)
    mean, std = train.mean_std()
    return ScratchData(
        train.images.numpy(),
        train.labels.numpy(),
        test.images.numpy(),
        test.labels.numpy(),
        float(mean.mean()),
        float(std.mean()),
    )


def normalise(images: np.ndarray, mean: float, std: float, dtype=np.float32) -> np.ndarray:
    """uint8 images -> (x / 255 - mean) / std in `dtype`, one multiply-add."""
    scale = 1.0 / (255.0 * std)
    return images.astype(dtype) * dtype(scale) - dtype(mean / std)


def evaluate(model: Sequential, images, labels, mean, std, batch_size: int = 1000) -> float:
    """Accuracy in eval mode (dropout off, BatchNorm on running statistics)."""
    model.eval()
    dtype = model.parameters()[0].dtype.type
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = normalise(images[start : start + batch_size], mean, std, dtype)
        logits = model.forward(x)
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def train_scratch(
    model: Sequential,
    data: ScratchData,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """Train `model` with SGD and momentum; one record per epoch with the mean training loss
    and the test accuracy."""
    rng = np.random.default_rng(seed)
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum)
    dtype = model.parameters()[0].dtype.type
    history = []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(data.train_labels))
        losses = []
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue  # BatchNorm cannot normalise a batch of one image
            x = normalise(data.train_images[index], data.mean, data.std, dtype)
            loss, dlogits = softmax_cross_entropy(model.forward(x), data.train_labels[index])
            model.backward(dlogits, input_grad=False)
            optimizer.step(model.gradients())
            losses.append(loss)
        acc = evaluate(model, data.test_images, data.test_labels, data.mean, data.std)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_acc": acc})
        loss = history[-1]["train_loss"]
        log(f"epoch {epoch + 1}/{epochs}  train loss {loss:.4f}  test acc {acc:.4f}")
    return history
