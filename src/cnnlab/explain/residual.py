"""Explain topic 12, residual learning: He et al.'s CIFAR-style networks, a shallow plain one, a
deep plain one and the deep one with identity shortcuts, trained on the real Fashion-MNIST
(through cnnlab's Trainer) to show the degradation of deep plain networks and its cure.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, percent, topic
from cnnlab.explain.training import (
    TrainResult,
    count_params,
    load_fashion_mnist,
    train_with_adam,
    with_epochs,
)
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.resnet import BlockSpec, ResidualBlock


class _PlainBlock(ResidualBlock):
    """A residual block with its shortcut taken away: ReLU(branch(x)), the 'plain' network of
    He et al. with exactly the same convolutions."""

    def __init__(self, spec: BlockSpec, in_channels: int, planes: int, stride: int):
        super().__init__(spec, in_channels, planes, stride)
        del self.shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x))


def _cifar_style_net(blocks: int, width: int, residual: bool) -> nn.Sequential:
    """He et al.'s CIFAR networks, 6 x blocks + 2 layers: a conv, three stages of `blocks` basic
    blocks at width, 2 x width and 4 x width channels (each later stage halving the size), global
    pooling and a linear layer. A stride-2 first conv (28 -> 14) keeps the deep nets cheap."""
    spec, kind = BlockSpec(bottleneck=False), ResidualBlock if residual else _PlainBlock
    layers: list[nn.Module] = [ConvNormAct(1, width, 3, 2, 1)]
    channels = width
    for stage in range(3):
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(kind(spec, channels, width * 2**stage, stride))
            channels = width * 2**stage
    model = nn.Sequential(*layers, GlobalPoolHead(channels, 10))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):  # as the paper and cnnlab's ResNet initialise
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


@topic(
    12,
    "residual",
    "Residual learning",
    "A deeper plain network reaches a higher training error than a shallower one; with identity "
    "shortcuts the same deep network does not.",
    """He, Zhang, Ren, Sun (2016) found that stacking more layers on a plain network made it
    worse on its own training set, even with BatchNorm: a degradation of optimisation, not
    over-fitting. Letting each pair of layers learn a residual F(x) added to an identity
    shortcut x removed it. The experiment builds their CIFAR-style networks, narrow (8, 16 and
    32 channels) for a CPU: a shallow plain net, a deep plain net (8 and 32 layers in the quick
    run, the paper's 20 and 56 in the full one) and the deep net with identity
    shortcuts (1x1 projections where the width changes), trains all three the same way (Adam,
    same rate, batch and epochs) and compares their training error, measured on the training
    images after training, and their training-loss curves. The residual net must stay at most 2
    points above the shallow one while the deep plain net is at least 10 points worse.""",
)
def residual(ctx: Context) -> Finding:
    data = load_fashion_mnist(ctx)
    # quick: 8 vs 32 layers; full: the paper's 20 vs 56, on more images for longer
    shallow, deep = (1, 5) if ctx.quick else (3, 9)
    images, epochs = (1000, 4) if ctx.quick else (4000, 8)
    nets = {
        f"plain-{6 * shallow + 2}": (shallow, False),
        f"plain-{6 * deep + 2}": (deep, False),
        f"residual-{6 * deep + 2}": (deep, True),
    }
    results: dict[str, TrainResult] = {}
    params = {}
    for name, (blocks, shortcut) in nets.items():
        ctx.manual_seed(1)
        model = _cifar_style_net(blocks, 8, shortcut)
        params[name] = count_params(model)
        ctx.log(f"{name}: training on {images} images for {epochs} epochs")
        results[name] = train_with_adam(
            ctx, model, data, images, 500, epochs, lr=1e-3, batch_size=32
        )
    errors = {name: 1 - result.train_acc for name, result in results.items()}
    shallow_name, deep_name, residual_name = nets
    degradation = errors[deep_name] - errors[shallow_name]
    residual_excess = errors[residual_name] - errors[shallow_name]
    degrades, recovers = degradation >= 0.10, residual_excess <= 0.02
    figures = save_curves(
        ctx.figure_path("training-loss"),
        {
            name: (list(range(1, epochs + 1)), with_epochs(result, "train_loss"))
            for name, result in results.items()
        },
        f"Training loss, {images} Fashion-MNIST images",
        "epoch",
        "training loss (cross-entropy)",
    )
    verdict = (
        f"After {epochs} epochs on {images} images the training error is "
        + ", ".join(f"{percent(error)} for {name}" for name, error in errors.items())
        + f". The deep plain net is {100 * degradation:+.1f} points worse than the shallow one "
        f"({'a degradation' if degrades else 'less than the 10 points asked for'}); the "
        f"residual net of the same depth is {100 * abs(residual_excess):.1f} points "
        f"{'above' if residual_excess > 0 else 'below'} the shallow one "
        f"({'within' if recovers else 'outside'} the margin of at most 2 points above)."
    )
    return Finding(
        numbers={
            "training_error": errors,
            "train_loss_curves": {n: with_epochs(r, "train_loss") for n, r in results.items()},
            "test_acc": {n: r.test_acc for n, r in results.items()},
            "params": params,
            "degradation": degradation,
            "residual_excess_over_shallow": residual_excess,
            "train_images": images,
            "epochs": epochs,
        },
        holds=degrades and recovers,
        verdict=verdict,
        figures=figures,
    )
