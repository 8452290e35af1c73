"""Training a small network on (part of) the real Fashion-MNIST for an explain topic.

The topics that need accuracy or training error on real images train through cnnlab's own
`Trainer`, not a loop of their own: the same data pipeline, optimisers, evaluation and
BatchNorm handling as `cnnlab train`. Only the subset sizes, the epochs and the model change.
The run folder goes to a temporary directory, removed afterwards.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data import load_dataset
from cnnlab.data.dataset import ImageSet
from cnnlab.explain.topic import Context
from cnnlab.runs.config import TrainConfig
from cnnlab.train.setup import RunData
from cnnlab.train.trainer import Trainer


@dataclass
class FashionMnist:
    train: ImageSet
    test: ImageSet


@dataclass
class TrainResult:
    history: list[dict]  # one record per epoch: train_loss, train_acc, val_loss, val_acc, ...
    test_loss: float
    test_acc: float
    train_acc: float  # accuracy on the whole training subset after training (eval mode)
    train_loss: float


def load_fashion_mnist(ctx: Context) -> FashionMnist:
    """The real Fashion-MNIST (a clear CnnlabError naming the folder when it is missing)."""
    train = load_dataset(
        "fashion-mnist", "train", root=ctx.data_dir, download=ctx.download, progress=False
    )
    test = load_dataset(
        "fashion-mnist", "test", root=ctx.data_dir, download=ctx.download, progress=False
    )
    return FashionMnist(train, test)


def balanced_subset(data: ImageSet, count: int, seed: int, name: str) -> ImageSet:
    """`count` images, the same number from every class (as near as divides), drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    classes = len(data.classes)
    picked = []
    for label in range(classes):
        members = torch.nonzero(data.labels == label).flatten()
        share = count // classes + (1 if label < count % classes else 0)
        order = torch.randperm(len(members), generator=generator)[:share]
        picked.append(members[order])
    return data.subset(torch.sort(torch.cat(picked)).values, name)


def train_classifier(
    ctx: Context,
    model: nn.Module,
    data: FashionMnist,
    *,
    train_images: int,
    test_images: int,
    epochs: int,
    lr: float,
    optimizer: str = "sgd",
    batch_size: int = 128,
    weight_decay: float = 0.0,
    val_images: int = 0,
    early_stopping: int = 0,
    seed_offset: int = 0,
) -> TrainResult:
    """Train `model` with the Trainer on balanced subsets of the training and test sets."""
    seed = ctx.seed + seed_offset
    train = balanced_subset(data.train, train_images + val_images, seed, "fashion-mnist/train")
    val = None
    if val_images:
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
        val = train.subset(order[:val_images], "fashion-mnist/val")
        train = train.subset(order[val_images:], "fashion-mnist/train")
    test = balanced_subset(data.test, test_images, seed, "fashion-mnist/test")
    mean, std = train.mean_std()
    run_data = RunData(train, val, test, mean.tolist(), std.tolist())
    with tempfile.TemporaryDirectory(prefix="cnnlab-explain-") as folder:
        config = TrainConfig(
            model="explain",
            out=folder,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            early_stopping=early_stopping,
            early_stopping_metric="val_loss",
            # The split is made above; the fraction only records it (and lets early stopping,
            # which watches a validation set, pass the config's checks).
            val_split=round(val_images / (train_images + val_images), 6),
            precise_bn=0,
            resize=28,
            seed=seed,
            device="cpu",
            precision="fp32",
            memory_format="contiguous",
            quiet=True,
        )
        trainer = Trainer(config, echo=_epoch_lines(ctx.log), data=run_data, model=model)
        history = trainer.fit()
        on_train = trainer.evaluate(train)
    final = trainer.final_evaluation
    return TrainResult(history, final.loss, final.acc, on_train.acc, on_train.loss)


# Adam at a constant rate for the global-pooling, residual and fitting topics: with SGD (momentum
# 0.9, constant rate) at the rates that train their BatchNorm nets in a few epochs, the last
# iterate's eval-mode accuracy swung by 20-30 points from epoch to epoch, which drowned the
# effects being measured.
def train_with_adam(
    ctx: Context, model: nn.Module, data: FashionMnist, images, test, epochs, **options
) -> TrainResult:
    """Train with Adam at a constant rate through cnnlab's Trainer."""
    options.update(train_images=images, test_images=test, epochs=epochs, optimizer="adam")
    return train_classifier(ctx, model, data, **options)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _epoch_lines(log):
    """Pass on the Trainer's progress (its epoch lines), not its final report: the topic
    reports the results itself, and the run folder the report names is about to go."""

    def echo(line: str) -> None:
        if line.startswith("epoch "):
            log(line)

    return echo


def with_epochs(result: TrainResult, key: str) -> list[float]:
    """One column of the history, e.g. with_epochs(result, "train_loss")."""
    return [record[key] for record in result.history]
