"""The few kinds of picture the explain topics draw: curves on shared axes, and bars.

Built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no GUI backend) and written
atomically, like the training plots.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.fileio import atomic_path

_DPI = 110


def save_curves(
    path: Path | None,
    series: dict[str, tuple[list[float], list[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    log_y: bool = False,
) -> list[str]:
    """One line per name: series[name] = (xs, ys). Returns [str(path)], or [] when path is None
    (no --out given), so a topic can add the result to its figures unconditionally."""
    if path is None:
        return []
    figure = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    axes = figure.add_subplot()
    for name, (xs, ys) in series.items():
        axes.plot(xs, ys, label=name, marker="o" if len(xs) <= 30 else None, markersize=3)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_x:
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return [_save(figure, path)]


def save_bars(
    path: Path | None, values: dict[str, float], title: str, ylabel: str, log_y: bool = False
) -> list[str]:
    """One bar per name; [] when path is None."""
    if path is None:
        return []
    figure = Figure(figsize=(6.4, 4.0), dpi=_DPI)
    axes = figure.add_subplot()
    axes.bar(list(values), list(values.values()), color="tab:blue")
    axes.set(title=title, ylabel=ylabel)
    if log_y:
        axes.set_yscale("log")
    axes.tick_params(axis="x", labelrotation=20)
    axes.grid(alpha=0.3, axis="y")
    return [_save(figure, path)]


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        FigureCanvasAgg(figure).print_png(temporary)
    return str(path)
