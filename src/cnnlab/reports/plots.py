"""Pictures of a training run: learning curves, the confusion matrix and the learning-rate test.

`plot_curves` draws what d2l's `Animator` draws (loss and accuracy against epoch, train and
validation) but on two panels, so accuracy keeps its fixed [0, 1] scale while the loss scales
freely. `plot_confusion` is the usual heatmap (rows true class, columns predicted), and
`plot_lr_find` the loss-against-rate curve of Smith's range test ("Cyclical Learning Rates for
Training Neural Networks", 2017).

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: no
GUI backend is ever chosen, and no global figure registry keeps figures alive after a call.
Every PNG is written atomically, so a run folder never holds half a picture.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_path

_DPI = 110
_ANNOTATE_MAX_CLASSES = 20  # beyond this, numbers in the cells are too small to read
_NAMES_MAX_CLASSES = 60  # beyond this, class names on the axes overlap into a black bar
_MARKERS_MAX_EPOCHS = 30
_TRAIN_COLOUR, _VAL_COLOUR = "tab:blue", "tab:orange"
_HEAT_COLOURS = colormaps["Blues"].with_extremes(bad="0.85")  # "bad" (NaN) cells in light grey


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Write loss and accuracy against epoch (train, and validation where present) to `path`."""
    if not history:
        raise CnnlabError(f"cannot plot curves to {path}: the history is empty, expected epochs")
    epochs = [int(entry["epoch"]) for entry in history]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, acc_axes = figure.subplots(1, 2)
    # Loss falls and accuracy rises, so each legend goes in the corner its curves leave empty.
    panels = (
        (loss_axes, "loss", "loss", "upper right"),
        (acc_axes, "acc", "accuracy", "lower right"),
    )
    for axes, metric, label, corner in panels:
        _plot_series(axes, history, f"train_{metric}", f"train {label}", _TRAIN_COLOUR)
        _plot_series(axes, history, f"val_{metric}", f"val {label}", _VAL_COLOUR)
        _style_epoch_axes(axes, label, epochs)
        axes.legend(loc=corner)
    loss_axes.set_ylim(bottom=0)
    acc_axes.set_ylim(0, 1.02)  # a little headroom so points at 100% are not cut in half
    if title:
        figure.suptitle(title)
    _save(figure, path)


def plot_confusion(
    confusion: torch.Tensor | np.ndarray,
    classes: list[str],
    path: str | os.PathLike,
    title: str = "",
    normalize: bool = True,
) -> None:
    """Write the confusion matrix (rows true class, columns predicted) as a heatmap to `path`.

    With `normalize`, each row shows the percentage of that true class predicted as each
    class, so the diagonal reads as per-class accuracy; a class with no samples is greyed out.
    """
    counts = _as_square_matrix(confusion, classes, path)
    values = _row_percentages(counts) if normalize else counts
    vmax = 100.0 if normalize else max(float(counts.max()), 1.0)
    size = min(max(4.0 + 0.45 * len(classes), 5.5), 16.0)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(values), cmap=_HEAT_COLOURS, vmin=0, vmax=vmax)
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
    colorbar.set_label("% of true class" if normalize else "samples")
    if len(classes) <= _ANNOTATE_MAX_CLASSES:
        _annotate_cells(axes, values, vmax, percentages=normalize)
    _label_classes(axes, classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title or "Confusion matrix")
    _save(figure, path)


def plot_lr_find(
    lrs: list[float], losses: list[float], suggested: float | None, path: str | os.PathLike
) -> None:
    """Write the range test's loss against learning rate to `path`, marking `suggested`."""
    rates, values = _check_lr_find(lrs, losses, suggested, path)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(rates, values, color=_TRAIN_COLOUR, label="training loss")
    if suggested is not None:
        # The loss at the suggestion, read off the curve in log-rate space where it was sampled.
        at = float(np.interp(math.log(suggested), np.log(rates), values))
        axes.axvline(suggested, color="tab:red", linestyle="--", linewidth=1.5)
        label = f"suggested lr = {suggested:.2g}"
        axes.plot([suggested], [at], "o", markersize=8, color="tab:red", label=label)
    axes.set_xscale("log")
    axes.set_ylim(*_lr_find_loss_range(values))
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("loss")
    axes.set_title("Learning-rate range test")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    _save(figure, path)


def _plot_series(axes, history, key, label, colour) -> None:
    """Plot one metric over the epochs that have it; a metric no epoch has is left out."""
    present = [entry for entry in history if entry.get(key) is not None]
    if not present:
        return
    xs = [int(entry["epoch"]) for entry in present]
    # A diverged epoch (inf or nan) becomes a gap instead of flattening the scale.
    ys = [float(entry[key]) if math.isfinite(float(entry[key])) else math.nan for entry in present]
    # Markers keep a single epoch visible (a line alone would be a zero-length segment);
    # over many epochs they would only blur the line.
    marker = "o" if len(history) <= _MARKERS_MAX_EPOCHS else None
    axes.plot(xs, ys, marker=marker, markersize=4, color=colour, label=label)


def _style_epoch_axes(axes, quantity: str, epochs: list[int]) -> None:
    # At least half an epoch each side, so one or two epochs still get whole-number ticks
    # (the locator also needs min_n_ticks=1, or with one epoch it falls back to 0.9, 1.1, ...).
    pad = max(0.5, 0.03 * (max(epochs) - min(epochs)))
    axes.set_xlim(min(epochs) - pad, max(epochs) + pad)
    axes.set_xlabel("epoch")
    axes.set_ylabel(quantity)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(True, alpha=0.3)


def _as_square_matrix(confusion, classes: list[str], path) -> np.ndarray:
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    counts = np.asarray(confusion, dtype=np.float64)
    expected = (len(classes), len(classes))
    if counts.shape != expected or not classes:
        raise CnnlabError(
            f"cannot plot confusion matrix to {path}: expected a {expected[0]}x{expected[1]} "
            f"matrix for {len(classes)} class names, found shape {tuple(counts.shape)}"
        )
    return counts


def _row_percentages(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    # A true class with no samples has no rate to show: NaN, drawn as a grey row of dashes.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * counts / totals, np.nan)


def _annotate_cells(axes, values: np.ndarray, vmax: float, percentages: bool) -> None:
    count = values.shape[0]
    font_size = 10 if count <= 10 else 7
    for row in range(count):
        for col in range(count):
            value = values[row, col]
            # Dark cells get white text so the number stays readable on either end.
            colour = "white" if value > 0.55 * vmax else "black"
            text = _cell_text(value, percentages)
            axes.text(col, row, text, ha="center", va="center", color=colour, fontsize=font_size)


def _cell_text(value: float, percentages: bool) -> str:
    if math.isnan(value):
        return "–"  # a true class with no samples
    if not percentages:
        return str(int(value))
    # A few stray predictions must not read as none at all.
    return "<1" if 0 < value < 0.5 else f"{value:.0f}"


def _label_classes(axes, classes: list[str]) -> None:
    if len(classes) > _NAMES_MAX_CLASSES:
        return  # leave matplotlib's numbered ticks: names this dense would overlap
    positions = range(len(classes))
    font_size = 9 if len(classes) <= 20 else 6
    axes.set_xticks(positions, classes, rotation=45, ha="right", fontsize=font_size)
    axes.set_yticks(positions, classes, fontsize=font_size)


def _check_lr_find(lrs, losses, suggested, path) -> tuple[np.ndarray, np.ndarray]:
    rates = np.asarray(lrs, dtype=np.float64)
    values = np.asarray(losses, dtype=np.float64)
    where = f"cannot plot the learning-rate test to {path}"
    if rates.ndim != 1 or rates.shape != values.shape or rates.size == 0:
        raise CnnlabError(
            f"{where}: expected as many losses as learning rates (at least one), "
            f"found {rates.size} rates and {values.size} losses"
        )
    if not (rates > 0).all() or (suggested is not None and not suggested > 0):
        raise CnnlabError(f"{where}: expected positive learning rates for the log axis")
    # The test ends when the loss explodes; non-finite points become gaps in the curve.
    return rates, np.where(np.isfinite(values), values, np.nan)


def _lr_find_loss_range(values: np.ndarray) -> tuple[float, float]:
    """Y limits that show the descent: the explosion at the end would flatten everything else."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, first = float(finite.min()), float(finite[0])
    highest = float(finite.max())
    high = min(highest, first + 2 * (first - low)) if first > low else highest
    margin = 0.05 * (high - low) or 0.05 * abs(low) or 0.05
    return low - margin, high + margin


def _save(figure: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas: rendering never picks a backend
    with atomic_path(path) as temp:
        # The temp name ends in .tmp, so the format is said outright.
        figure.savefig(temp, format="png", dpi=_DPI)
