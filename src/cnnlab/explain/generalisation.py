"""Explain topics about what a trained network generalises from, on the real Fashion-MNIST:
global average pooling instead of a fully connected head, residual learning against the
degradation of deep plain networks, and over- and under-fitting (data size, model size, early
stopping). Every network here trains through cnnlab's Trainer (`training.train_classifier`)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from cnnlab.explain.figures import save_bars, save_curves
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.explain.training import (
    FashionMnist,
    TrainResult,
    load_fashion_mnist,
    train_classifier,
    with_epochs,
)
from cnnlab.models.layers import ConvNormAct, GlobalPoolHead
from cnnlab.models.resnet import BlockSpec, ResidualBlock


# Adam at a constant rate throughout: with SGD (momentum 0.9, constant rate) at the rates that
# train the BatchNorm nets here in a few epochs, the last iterate's eval-mode accuracy swung by
# 20-30 points from epoch to epoch, which drowned the effects being measured.
def _train(ctx: Context, model: nn.Module, data: FashionMnist, images, test, epochs, **options):
    """Train with Adam at a constant rate through cnnlab's Trainer."""
    options.update(train_images=images, test_images=test, epochs=epochs, optimizer="adam")
    return train_classifier(ctx, model, data, **options)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


# ---- 8: global average pooling ------------------------------------------------------------


def _extractor(width: int) -> nn.Sequential:
    """Six conv-BN-ReLU layers, three of them stride 2: 28x28 -> 4 x width channels at 4x4."""
    return nn.Sequential(
        ConvNormAct(1, width, 3, 1, 1),
        ConvNormAct(width, 2 * width, 3, 2, 1),
        ConvNormAct(2 * width, 2 * width, 3, 1, 1),
        ConvNormAct(2 * width, 4 * width, 3, 2, 1),
        ConvNormAct(4 * width, 4 * width, 3, 1, 1),
        ConvNormAct(4 * width, 4 * width, 3, 2, 1),
    )


@topic(
    8,
    "global-pooling",
    "Global average pooling vs a fully connected head",
    "A global-average-pooling head needs a tiny fraction of a fully connected head's parameters "
    "and classifies about as well.",
    """Network in Network (Lin, Chen, Yan, 2014) ends with one feature map per class, averaged
    over the image, instead of fully connected layers on the flattened maps, which held most of
    the parameters of AlexNet-style networks and over-fitted. The experiment trains the same
    small conv feature extractor (six conv-BN-ReLU layers to 32 maps of 4x4) twice on
    Fashion-MNIST, with the same optimiser, rate and epochs: once with a NiN-style head (global
    average pooling and one linear map to the 10 classes, the same function as a 1x1 conv to 10
    maps followed by the average) and once with a flatten + fully connected head (512 -> 128 ->
    10). It counts the parameters of each head and model and compares test accuracy; 'comparable'
    means within 2 percentage points.""",
)
def global_pooling(ctx: Context) -> Finding:
    data = load_fashion_mnist(ctx)
    width, hidden = 8, 128
    images, epochs, test = (3000, 6, 2000) if ctx.quick else (20000, 12, 10000)
    heads = {
        "GAP head": lambda: GlobalPoolHead(4 * width, 10),
        "FC head": lambda: nn.Sequential(
            nn.Flatten(1),
            nn.Linear(4 * width * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 10),
        ),
    }
    rows = {}
    for name, make_head in heads.items():
        ctx.manual_seed(1)  # the same starting extractor for both heads
        model = nn.Sequential(_extractor(width), make_head())
        ctx.log(f"{name}: training on {images} images for {epochs} epochs")
        result = _train(ctx, model, data, images, test, epochs, lr=2e-3, batch_size=64)
        rows[name] = {
            "head_params": _params(model[1]),
            "model_params": _params(model),
            "test_acc": result.test_acc,
            "train_acc": result.train_acc,
        }
    gap, fc = rows["GAP head"], rows["FC head"]
    share = gap["head_params"] / fc["head_params"]
    difference = gap["test_acc"] - fc["test_acc"]  # positive: GAP more accurate
    comparable = difference >= -0.02
    few = share < 0.05
    figures = save_bars(
        ctx.figure_path("head-parameters"),
        {name: row["head_params"] for name, row in rows.items()},
        "Parameters of the classifier head",
        "parameters (log scale)",
        log_y=True,
    ) + save_bars(
        ctx.figure_path("accuracy"),
        {name: 100 * row["test_acc"] for name, row in rows.items()},
        f"Test accuracy, {images} training images, {epochs} epochs",
        "test accuracy (%)",
    )
    verdict = (
        f"The GAP head has {gap['head_params']:,} parameters, {100 * share:.2f}% of the FC "
        f"head's {fc['head_params']:,} ({'under' if few else 'not under'} the 5% asked; models "
        f"{gap['model_params']:,} vs {fc['model_params']:,}). Test accuracy: GAP "
        f"{_pct(gap['test_acc'])}, FC {_pct(fc['test_acc'])}: GAP is "
        f"{100 * abs(difference):.1f} points {'more' if difference >= 0 else 'less'} accurate, "
        f"{'comparable' if comparable else 'not comparable'} by the measure used here (at most "
        f"2 points below FC). On its training images GAP reached {_pct(gap['train_acc'])} and FC "
        f"{_pct(fc['train_acc'])}."
    )
    return Finding(
        numbers={
            **{name.split()[0].lower(): row for name, row in rows.items()},
            "head_param_share": share,
            "test_acc_difference": difference,
            "comparable_margin": 0.02,
            "train_images": images,
            "epochs": epochs,
        },
        holds=comparable and few,
        verdict=verdict,
        figures=figures,
    )


# ---- 12: residual learning ------------------------------------------------------------------


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
        params[name] = _params(model)
        ctx.log(f"{name}: training on {images} images for {epochs} epochs")
        results[name] = _train(ctx, model, data, images, 500, epochs, lr=1e-3, batch_size=32)
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
        + ", ".join(f"{_pct(error)} for {name}" for name, error in errors.items())
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


# ---- 15: over- and under-fitting --------------------------------------------------------------


def _small_cnn(width: int) -> nn.Sequential:
    """Two conv-ReLU layers (5x5 and 3x3, stride 2), a 2x2 max pool and a linear layer on
    18 x width features. No BatchNorm: training and evaluation compute the same function."""
    return nn.Sequential(
        ConvNormAct(1, width, 5, 2, 2, norm=False),
        ConvNormAct(width, 2 * width, 3, 2, 1, norm=False),
        nn.MaxPool2d(2),
        nn.Flatten(1),
        nn.Linear(2 * width * 9, 10),
    )


def _fit(ctx: Context, data: FashionMnist, width: int, images: int, epochs: int, **options):
    ctx.manual_seed(1)
    ctx.log(f"width {width}: {images} images, up to {epochs} epochs")
    test = 2000 if ctx.quick else 10000
    model = _small_cnn(width)
    return _train(ctx, model, data, images, test, epochs, lr=3e-3, batch_size=64, **options)


def _sweep(results: list[TrainResult]) -> dict[str, list[float]]:
    return {
        "train_error": [1 - r.train_acc for r in results],
        "test_error": [1 - r.test_acc for r in results],
        "gap": [r.train_acc - r.test_acc for r in results],
    }


def _data_sweep(ctx: Context, data: FashionMnist) -> dict:
    """One model on more and more images, each run given the same number of steps."""
    sizes = [250, 1000, 4000] if ctx.quick else [250, 1000, 4000, 16000]
    steps = 250 if ctx.quick else 1000
    epochs = [max(2, round(steps * 64 / size)) for size in sizes]
    results = [_fit(ctx, data, 16, size, count) for size, count in zip(sizes, epochs, strict=True)]
    sweep = {"images": sizes, "epochs": epochs, **_sweep(results)}
    sweep["gap_shrinks"] = all(a > b for a, b in itertools.pairwise(sweep["gap"]))
    sweep["holds"] = sweep["gap_shrinks"] and sweep["test_error"][-1] < sweep["test_error"][0]
    return sweep


def _model_sweep(ctx: Context, data: FashionMnist) -> dict:
    """Wider and wider models on the same few images, for the same epochs."""
    widths = [1, 4, 16, 48] if ctx.quick else [1, 2, 4, 8, 16, 32, 64, 128]
    images, epochs = (400, 30) if ctx.quick else (500, 40)
    results = [_fit(ctx, data, width, images, epochs) for width in widths]
    sweep = {
        "images": images,
        "epochs": epochs,
        "width": widths,
        "params": [_params(_small_cnn(width)) for width in widths],
        **_sweep(results),
    }
    train, test, gap = sweep["train_error"], sweep["test_error"], sweep["gap"]
    sweep["first_step_test_gain"] = test[0] - test[1]
    sweep["last_step_test_gain"] = test[-2] - test[-1]
    sweep["test_error_rose"] = test[-1] > min(test) + 0.005
    sweep["under_fits"] = train[0] >= 0.15 and gap[0] <= 0.10
    sweep["over_fits"] = train[-1] <= 0.01 and gap[-1] >= 0.15
    sweep["levels_off"] = sweep["last_step_test_gain"] < 0.5 * sweep["first_step_test_gain"]
    sweep["holds"] = sweep["under_fits"] and sweep["over_fits"] and sweep["levels_off"]
    return sweep


def _early_stopping(ctx: Context, data: FashionMnist) -> tuple[dict, TrainResult]:
    """Train long with a validation split and patience; then the same run again without early
    stopping for as many epochs, which ends on the weights early stopping threw away."""
    images, patience, limit = (500, 5, 60) if ctx.quick else (1000, 8, 100)
    stopped = _fit(ctx, data, 16, images, limit, val_images=images, early_stopping=patience)
    val_loss = with_epochs(stopped, "val_loss")
    epochs = len(stopped.history)
    last = _fit(ctx, data, 16, images, epochs, val_images=images)
    numbers = {
        "train_images": images,
        "val_images": images,
        "max_epochs": limit,
        "patience": patience,
        "stopped_at_epoch": epochs,
        "val_loss_min_epoch": val_loss.index(min(val_loss)) + 1,
        "restored_test_acc": stopped.test_acc,
        "restored_test_loss": stopped.test_loss,
        "last_epoch_test_acc": last.test_acc,
        "last_epoch_test_loss": last.test_loss,
        "same_trajectory": with_epochs(last, "train_loss") == with_epochs(stopped, "train_loss"),
    }
    numbers["holds"] = (
        epochs < limit
        and numbers["val_loss_min_epoch"] == epochs - patience
        and stopped.test_loss < last.test_loss
    )
    return numbers, stopped


@topic(
    15,
    "fitting",
    "Over- and under-fitting",
    "The gap between training and test error shrinks as data grows; a too-small model under-fits, "
    "a large one over-fits; early stopping keeps the weights of the validation-loss minimum, "
    "whose test loss is lower than the last epoch's.",
    """A model under-fits when it cannot even fit its training set (high training error, test
    error close to it) and over-fits when it fits the training set far better than new data. The
    experiment trains small conv nets on Fashion-MNIST three ways: (a) one model on 250 to 4,000
    images (16,000 in the full run), each run given the same number of steps: the train-test gap
    should shrink as the data grows; (b) models from 236 parameters to tens or hundreds of
    thousands on the same few hundred images: training error falls to 0 while test error levels
    off; (c) training long with a validation split as large as the training set and early
    stopping: where it stopped, where the validation loss was lowest, and the test accuracy and
    loss of the restored best weights against those of the last epoch (the same run repeated
    without early stopping). Early stopping watches the validation loss, so the claim is about
    the test loss; the accuracy, which can still creep up after the loss has turned, is
    reported as measured.""",
)
def fitting(ctx: Context) -> Finding:
    data = load_fashion_mnist(ctx)
    by_data, by_model = _data_sweep(ctx, data), _model_sweep(ctx, data)
    stopping, stopped = _early_stopping(ctx, data)
    figures = _error_curves(ctx, "data-size", by_data["images"], by_data, "training images")
    figures += _error_curves(ctx, "model-size", by_model["params"], by_model, "parameters")
    epochs = list(range(1, stopping["stopped_at_epoch"] + 1))
    figures += save_curves(
        ctx.figure_path("early-stopping"),
        {
            "training loss": (epochs, with_epochs(stopped, "train_loss")),
            "validation loss": (epochs, with_epochs(stopped, "val_loss")),
        },
        f"Early stopping, patience {stopping['patience']}",
        "epoch",
        "loss (cross-entropy)",
    )
    return Finding(
        numbers={"data_size": by_data, "model_size": by_model, "early_stopping": stopping},
        holds=by_data["holds"] and by_model["holds"] and stopping["holds"],
        verdict=" ".join(
            [_data_verdict(by_data), _model_verdict(by_model), _stopping_verdict(stopping)]
        ),
        figures=figures,
    )


def _error_curves(ctx: Context, name: str, xs: list, sweep: dict, xlabel: str) -> list[str]:
    series = {"training error": (xs, sweep["train_error"]), "test error": (xs, sweep["test_error"])}
    title = f"Training and test error against the number of {xlabel}"
    return save_curves(ctx.figure_path(name), series, title, f"{xlabel} (log scale)", "error", True)


def _data_verdict(sweep: dict) -> str:
    gaps = ", ".join(
        f"{100 * gap:.1f} at {size}"
        for size, gap in zip(sweep["images"], sweep["gap"], strict=True)
    )
    trend = "shrank at every step" if sweep["gap_shrinks"] else "did not shrink at every step"
    return (
        f"(a) The train-test gap (points) was {gaps} images: it {trend}, as the test error went "
        f"from {_pct(sweep['test_error'][0])} to {_pct(sweep['test_error'][-1])} and the "
        f"training error from {_pct(sweep['train_error'][0])} to "
        f"{_pct(sweep['train_error'][-1])}."
    )


def _model_verdict(sweep: dict) -> str:
    train, test, params = sweep["train_error"], sweep["test_error"], sweep["params"]
    under = "under-fits" if sweep["under_fits"] else "does not under-fit"
    over = "over-fits" if sweep["over_fits"] else "does not over-fit"
    levels = "levels off" if sweep["levels_off"] else "does not level off"
    return (
        f"(b) From {params[0]:,} to {params[-1]:,} parameters on {sweep['images']} images the "
        f"training error fell from {_pct(train[0])} to {_pct(train[-1])} and the test error from "
        f"{_pct(test[0])} to {_pct(test[-1])}: the smallest model {under} (gap "
        f"{100 * sweep['gap'][0]:.1f} points; asked: training error >= 15%, gap <= 10 points), "
        f"the largest {over} (gap {100 * sweep['gap'][-1]:.1f} points; asked: training error "
        f"<= 1%, gap >= 15), and the test error {levels}: the first size step cut it by "
        f"{100 * sweep['first_step_test_gain']:.1f} points, the last by "
        f"{100 * sweep['last_step_test_gain']:.1f}"
        f"{' (it rose past its minimum)' if sweep['test_error_rose'] else ''}."
    )


def _stopping_verdict(numbers: dict) -> str:
    same = "" if numbers["same_trajectory"] else " (the repeat did not retrace the same run)"
    gain = numbers["restored_test_acc"] - numbers["last_epoch_test_acc"]
    gain_loss = numbers["last_epoch_test_loss"] - numbers["restored_test_loss"]
    return (
        f"(c) Early stopping (patience {numbers['patience']}) stopped at epoch "
        f"{numbers['stopped_at_epoch']} of {numbers['max_epochs']}; the validation loss was "
        f"lowest at epoch {numbers['val_loss_min_epoch']}. The restored weights score "
        f"{_pct(numbers['restored_test_acc'])} on the test set (loss "
        f"{numbers['restored_test_loss']:.3f}), the last epoch's "
        f"{_pct(numbers['last_epoch_test_acc'])} (loss {numbers['last_epoch_test_loss']:.3f})"
        f"{same}: a {'lower' if gain_loss > 0 else 'higher'} test loss and "
        f"{100 * abs(gain):.1f} points of accuracy {'gained' if gain >= 0 else 'lost'} by "
        f"stopping early."
    )
