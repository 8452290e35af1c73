"""Explain topic 15, over- and under-fitting on the real Fashion-MNIST: the train-test gap as
the data grows, small to large models on a few images, and early stopping on a validation split.
Every network here trains through cnnlab's Trainer (`training.train_with_adam`).
"""

from __future__ import annotations

import itertools

from torch import nn

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, percent, topic
from cnnlab.explain.training import (
    FashionMnist,
    TrainResult,
    count_params,
    load_fashion_mnist,
    train_with_adam,
    with_epochs,
)
from cnnlab.models.layers import ConvNormAct


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
    return train_with_adam(
        ctx, model, data, images, test, epochs, lr=3e-3, batch_size=64, **options
    )


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
        "params": [count_params(_small_cnn(width)) for width in widths],
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
        f"from {percent(sweep['test_error'][0])} to {percent(sweep['test_error'][-1])} and the "
        f"training error from {percent(sweep['train_error'][0])} to "
        f"{percent(sweep['train_error'][-1])}."
    )


def _model_verdict(sweep: dict) -> str:
    train, test, params = sweep["train_error"], sweep["test_error"], sweep["params"]
    under = "under-fits" if sweep["under_fits"] else "does not under-fit"
    over = "over-fits" if sweep["over_fits"] else "does not over-fit"
    levels = "levels off" if sweep["levels_off"] else "does not level off"
    return (
        f"(b) From {params[0]:,} to {params[-1]:,} parameters on {sweep['images']} images the "
        f"training error fell from {percent(train[0])} to {percent(train[-1])} and the test "
        f"error from {percent(test[0])} to {percent(test[-1])}: the smallest model {under} (gap "
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
        f"{percent(numbers['restored_test_acc'])} on the test set (loss "
        f"{numbers['restored_test_loss']:.3f}), the last epoch's "
        f"{percent(numbers['last_epoch_test_acc'])} (loss {numbers['last_epoch_test_loss']:.3f})"
        f"{same}: a {'lower' if gain_loss > 0 else 'higher'} test loss and "
        f"{100 * abs(gain):.1f} points of accuracy {'gained' if gain >= 0 else 'lost'} by "
        f"stopping early."
    )
