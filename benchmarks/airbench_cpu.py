"""Anchor: a CPU port of the CIFAR-10 speed-run recipe airbench94, written here from its paper's
description (Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024), trained
on the same image folder and machine as cnnlab, timed from process start like cnnlab's runs.

What the paper describes and this port does:
- network: a 2x2 convolution (no padding) initialised as a patch-whitening transform (the
  eigenvectors of the training images' 2x2 patches, scaled by their inverse square roots,
  and their negatives: 24 filters), frozen, then GELU; three blocks of widths 64, 256, 256, each
  conv 3x3 -> max pool 2 -> BatchNorm -> GELU -> conv 3x3 -> BatchNorm -> GELU; a 3x3 max pool,
  a linear layer without bias and a fixed output scale of 1/9; BatchNorm weights frozen at 1;
- training: Nesterov SGD (momentum 0.85), batch 1024, the BatchNorm biases at 64x the learning
  rate, a learning rate rising linearly from 0.2x to its peak over the first 20% of the steps
  then falling linearly to 0, label smoothing
  0.2, random horizontal flips and 2-pixel translations (reflect padding), and lookahead:
  every 5 steps an exponential moving average of the weights is taken, and the weights are
  reset to it;
- test-time augmentation: the mean of the logits of the image, its mirror image, and both
  shifted by one pixel.
Simplified here: flips are random rather than alternating between epochs, the whitening
layer's bias is not trained, and there is no per-parameter learning-rate split.

Run: CNNLAB_DATA=../shared/data python benchmarks/airbench_cpu.py --epochs 2 [--seed 0]
Prints one JSON line: accuracy, seconds from process start to the final accuracy, epochs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.clock import seconds_since_start
from cnnlab.data import load_dataset

WIDTHS = (64, 256, 256)
WHITEN = 12  # eigenvectors of the 2x2x3 patches (12 dimensions), with their negatives: 24


def block(cin: int, cout: int) -> nn.Sequential:
    def norm(width):
        bn = nn.BatchNorm2d(width, momentum=0.4, eps=1e-12)
        bn.weight.requires_grad_(False)
        return bn

    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), norm(cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout), nn.GELU(),
    )  # fmt: skip


class AirbenchNet(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.whiten = nn.Conv2d(3, 2 * WHITEN, 2, padding=0)
        self.whiten.requires_grad_(False)
        self.blocks = nn.Sequential(block(2 * WHITEN, WIDTHS[0]), block(WIDTHS[0], WIDTHS[1]),
                                    block(WIDTHS[1], WIDTHS[2]))  # fmt: skip
        self.head = nn.Linear(WIDTHS[2], classes, bias=False)

    def forward(self, x):
        x = self.blocks(F.gelu(self.whiten(x)))
        x = F.max_pool2d(x, 3).flatten(1)
        return self.head(x) / 9

    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5)
        patches = patches.reshape(-1, 12).double()
        patches = patches - patches.mean(0)
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2).float()
        with torch.no_grad():
            self.whiten.weight.copy_(torch.cat([filters, -filters]))
            self.whiten.bias.zero_()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()  # one shift per batch
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def tta_logits(model, images: torch.Tensor) -> torch.Tensor:
    views = [images, images.flip(3)]
    padded = [F.pad(view, (1, 1, 1, 1), mode="reflect") for view in views]
    views += [view[:, :, :-2, :-2] for view in padded] + [view[:, :, 2:, 2:] for view in padded]
    return torch.stack([model(view) for view in views]).mean(0)


def train(folder: Path, epochs: float, seed: int, batch: int = 1024) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_set, test_set = load_dataset(folder, "train"), load_dataset(folder, "test")
    mean = train_set.images.float().mean((0, 2, 3), keepdim=True) / 255
    std = train_set.images.float().std((0, 2, 3), keepdim=True) / 255
    train_x = ((train_set.images.float() / 255 - mean) / std).to(memory_format=torch.channels_last)
    test_x = ((test_set.images.float() / 255 - mean) / std).to(memory_format=torch.channels_last)
    model = AirbenchNet(len(train_set.classes)).to(memory_format=torch.channels_last)
    model.init_whitening(train_x[:5000])
    # the recipe's settings (lr 11.5, weight decay 0.0153 on a summed loss, scaled by 1024 x
    # (1 + 1 / (1 - momentum))), rewritten for a batch-mean loss; BatchNorm biases at 64x the lr
    momentum = 0.85
    scale = 1 + 1 / (1 - momentum)
    lr, wd = 11.5 / scale, 0.0153 / (scale * batch)
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": biases, "lr": lr * 64, "weight_decay": wd / 64},
         {"params": others, "lr": lr, "weight_decay": wd}],
        momentum=momentum, nesterov=True,
    )  # fmt: skip
    steps_per_epoch = len(train_x) // batch
    total = max(1, round(epochs * steps_per_epoch))
    warm = max(1, int(0.2 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # 0.2 -> 1 over the first 20%, then -> 0
        optimizer,
        lambda s: 0.2 + 0.8 * s / warm if s < warm else max(0.0, (total - s) / (total - warm)),
    )
    average = [p.detach().clone() for p in model.state_dict().values()]
    step = 0
    while step < total:
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, steps_per_epoch * batch, batch):
            if step >= total:
                break
            index = order[start : start + batch]
            images = augment(train_x[index], generator)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), train_set.labels[index], label_smoothing=0.2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 5 == 0 or step == total:  # lookahead: pull the weights to their average
                decay = 0.95**5 if step < total else 0.0
                with torch.no_grad():
                    for avg, value in zip(average, model.state_dict().values(), strict=True):
                        if value.is_floating_point():
                            avg.lerp_(value, 1 - decay)
                            value.copy_(avg)
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(test_x), 2000):
            logits = tta_logits(model, test_x[start : start + 2000])
            correct += int((logits.argmax(1) == test_set.labels[start : start + 2000]).sum())
    return {"accuracy": correct / len(test_x), "seconds": round(seconds_since_start(), 1),
            "epochs": epochs, "steps": total, "seed": seed}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=None, help="default: $CNNLAB_DATA/cifar10-jpeg")
    args = parser.parse_args()
    folder = Path(args.folder or Path(os.environ["CNNLAB_DATA"]) / "cifar10-jpeg")
    print(json.dumps(train(folder, args.epochs, args.seed)))


if __name__ == "__main__":
    main()
