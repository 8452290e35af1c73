"""The run comparison as one self-contained HTML page: the leaderboard, the learning curves of
every run overlaid, and a confusion matrix per run.

Everything the page shows is inside the file: the CSS inline, every figure a PNG in a base64
`data:` URI, no script and no external address, so it opens the same from a mail attachment,
an archive or a machine with no network. Figures are drawn with matplotlib on an Agg canvas
(never pyplot), as in plots.py, whose confusion heatmap is reused. The file is written
atomically.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes
from cnnlab.reports.compare import (
    MISSING,
    SORT_NOTE,
    ComparedRun,
    Leaderboard,
    leaderboard_cells,
    leaderboard_header,
)
from cnnlab.reports.plots import plot_confusion
from cnnlab.version import __version__

_DPI = 100
_MARKERS_MAX_EPOCHS = 30  # beyond this, markers only blur the lines
_TRAIN_STYLE, _VAL_STYLE = "-", "--"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1f2328; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; }
p.note { color: #57606a; font-size: 0.9em; margin: 0.3em 0; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.6em 0; }
th, td { padding: 0.35em 0.7em; border-bottom: 1px solid #d0d7de; white-space: nowrap; }
th { background: #f6f8fa; text-align: left; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.unfinished td { color: #8c959f; font-style: italic; }
tbody tr:hover { background: #f6f8fa; }
figure { margin: 0.6em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: 0.9em; color: #57606a; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1em; }
"""

_NUMBER_COLUMNS = {"#", "params", "MACs", "best val", "test acc", "time", "images/s"}


def check_report_path(path: str | Path) -> Path:
    """`path` if an HTML report can be written there; checked before hours of training."""
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(
            f"cannot write the HTML report to {path}: it is a folder, expected a file"
        )
    if not path.parent.is_dir():
        raise CnnlabError(
            f"cannot write the HTML report to {path}: folder {path.parent} does not exist"
        )
    return path


def write_html_report(board: Leaderboard, path: str | Path, title: str = "Run comparison") -> Path:
    """Write the report of `board` to `path` (atomically) and return the path."""
    path = check_report_path(path)
    atomic_write_bytes(path, render_html(board, title).encode())
    return path


def render_html(board: Leaderboard, title: str = "Run comparison") -> str:
    sections = [
        f"<h1>{_text(title)}</h1>",
        f'<p class="note">{len(board.runs)} run(s); cnnlab {_text(__version__)}</p>',
        "<h2>Leaderboard</h2>",
        _leaderboard_table(board),
        f'<p class="note">{_text(SORT_NOTE)}. MACs: multiply-accumulates of convolutions and '
        "linear layers per image (1 MAC = 2 FLOPs). Time: the training epochs, as recorded in "
        "metrics.jsonl; images/s: training images per second over those epochs. "
        f"{_text(MISSING)}: not recorded by the run.</p>",
        "<h2>Learning curves</h2>",
        _curves_section(board.runs),
        "<h2>Confusion matrices</h2>",
        _confusions_section(board.runs),
        "<h2>Runs</h2>",
        _details_table(board.runs),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_text(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _leaderboard_table(board: Leaderboard) -> str:
    header = leaderboard_header(board)
    head = "".join(f"<th{_number_class(name, board)}>{_text(name)}</th>" for name in header)
    rows = []
    for rank, run in enumerate(board.runs, start=1):
        cells = leaderboard_cells(board, rank, run)
        tds = "".join(
            f"<td{_number_class(name, board)}>{_text(cell)}</td>"
            for name, cell in zip(header, cells, strict=True)
        )
        kind = "finished" if run.finished else "unfinished"
        rows.append(f'<tr class="{kind}">{tds}</tr>')
    return (
        f'<table class="leaderboard" id="leaderboard"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _number_class(name: str, board: Leaderboard) -> str:
    numeric = name in _NUMBER_COLUMNS or name == board.reference_title
    return ' class="number"' if numeric else ""


def _curves_section(runs: list[ComparedRun]) -> str:
    drawn = [run for run in runs if run.curves.get("epoch")]
    if not drawn:
        return '<p class="note">No run has finished an epoch yet: no curves to draw.</p>'
    png = curves_png(drawn)
    caption = "Solid: training; dashed: validation (where the run held out a validation split)."
    return _figure(png, "learning curves of every run", caption, "curves")


def _confusions_section(runs: list[ComparedRun]) -> str:
    figures, missing = [], []
    for run in runs:
        if run.confusion is None or not run.classes:
            missing.append(run.label)
            continue
        caption = f"{run.label}: {run.model}, {run.eval_split or 'final evaluation'}"
        alt = f"confusion matrix of {run.label}"
        figures.append(_figure(confusion_png(run), alt, caption, "confusion"))
    parts = [f'<div class="grid">{"".join(figures)}</div>'] if figures else []
    if missing:
        names = ", ".join(missing)
        parts.append(f'<p class="note">No final evaluation, so no matrix: {_text(names)}.</p>')
    return "\n".join(parts)


def _details_table(runs: list[ComparedRun]) -> str:
    header = ["run", "folder", "dataset", "input", "epochs", "best val epoch", "evaluated on"]
    rows = []
    for run in runs:
        size = "x".join(map(str, run.input_size)) if run.input_size else MISSING
        cells = [
            run.label,
            run.path,
            run.dataset,
            size,
            f"{run.epochs_run} of {run.epochs_planned}",
            str(run.best_val_epoch) if run.best_val_epoch is not None else MISSING,
            run.eval_split or MISSING,
        ]
        rows.append("<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    return (
        f'<table class="details"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def curves_png(runs: list[ComparedRun]) -> bytes:
    """Loss and accuracy against epoch, every run in its own colour, train solid and
    validation dashed, as PNG bytes."""
    figure = Figure(figsize=(12, 4.6), layout="constrained")
    loss_axes, acc_axes = figure.subplots(1, 2)
    colours = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    longest = max(len(run.curves["epoch"]) for run in runs)
    marker = "o" if longest <= _MARKERS_MAX_EPOCHS else None
    for index, run in enumerate(runs):
        colour = colours(index % colours.N)
        for axes, metric in ((loss_axes, "loss"), (acc_axes, "acc")):
            for split, style in (("train", _TRAIN_STYLE), ("val", _VAL_STYLE)):
                _plot_curve(axes, run, f"{split}_{metric}", colour, style, marker)
    for axes, label in ((loss_axes, "loss"), (acc_axes, "accuracy")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(True, alpha=0.3)
    loss_axes.set_ylim(bottom=0)
    acc_axes.set_ylim(0, 1.02)
    handles = [Line2D([], [], color=colours(i % colours.N), lw=2) for i in range(len(runs))]
    labels = [run.label for run in runs]
    if any(value is not None for run in runs for value in run.curves["val_loss"]):
        handles += [Line2D([], [], color="0.3", ls=style) for style in (_TRAIN_STYLE, _VAL_STYLE)]
        labels += ["train", "validation"]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    return _png(figure)


def confusion_png(run: ComparedRun) -> bytes:
    """The run's confusion matrix, drawn by plots.plot_confusion, as PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-report-") as folder:
        path = Path(folder) / "confusion.png"
        plot_confusion(run.confusion, run.classes, path, title=f"{run.label} ({run.model})")
        return path.read_bytes()


def _plot_curve(axes, run: ComparedRun, key: str, colour, style: str, marker) -> None:
    points = [
        (x, y) for x, y in zip(run.curves["epoch"], run.curves[key], strict=True) if y is not None
    ]
    if points:
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, ls=style, color=colour, marker=marker, markersize=4)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas: no backend is chosen
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _figure(png: bytes, alt: str, caption: str, kind: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="{kind}"><img alt="{_text(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_text(caption)}</figcaption></figure>"
    )


def _text(value: str) -> str:
    return html.escape(str(value), quote=True)
