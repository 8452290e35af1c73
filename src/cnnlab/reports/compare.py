"""Comparing run folders: each run read into one leaderboard row, its learning curves and its
confusion matrix; the rows sorted and printed as text or JSON. Pure data: the pictures and the
HTML page are html_report.py's.

Every figure is one the run recorded (see runs/folder.py): the epochs in metrics.jsonl, the final
evaluation in evaluation.json, the model's input channels and classes in the final weights'
metadata (or, for a run that never finished, in its newest checkpoint). A figure a run did not
record, an older run for instance, is None and shows as a dash; nothing is estimated.
Parameters and MACs are computed from the run's model, build options and input size on the
meta device (cnnlab.analysis.summary), so no weights are loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from cnnlab.analysis.summary import summarize
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.config import config_from, load_toml
from cnnlab.runs.folder import RunFolder
from cnnlab.runs.weights import CHECKPOINT_KEY, WEIGHTS_KEY

SORT_NOTE = "sorted by test accuracy, highest first; runs without a final evaluation last"
CURVE_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc")
MISSING = "—"


@dataclass
class ComparedRun:
    label: str  # the folder's name, or its path where two runs share a name
    path: str
    model: str
    dataset: str
    status: str  # "finished", "finished, not evaluated" or "unfinished: N of M epochs"
    epochs_run: int
    epochs_planned: int
    input_size: list[int] | None  # [channels, height, width] the model was fed
    params: int | None
    macs: int | None
    best_val_acc: float | None
    best_val_epoch: int | None
    test_acc: float | None
    eval_split: str | None  # the split evaluation.json was measured on
    train_seconds: float | None
    images_per_s: float | None
    reference_acc: float | None = None  # a published figure to compare with (see Leaderboard)
    curves: dict[str, list] = field(default_factory=dict)  # "epoch" and CURVE_KEYS, per epoch
    classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] | None = None

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    def to_dict(self) -> dict:
        row = asdict(self)
        del row["classes"], row["confusion"]  # evaluation.json holds them
        return row


@dataclass
class Leaderboard:
    runs: list[ComparedRun]  # sorted (see SORT_NOTE)
    reference_title: str | None = None  # heads the reference_acc column when there is one

    def to_dict(self) -> dict:
        return {
            "sorted_by": SORT_NOTE,
            "reference": self.reference_title,
            "runs": [run.to_dict() for run in self.runs],
        }


def compare_runs(
    paths: list[str | Path],
    reference: dict[str, float | None] | None = None,
    reference_title: str | None = None,
) -> Leaderboard:
    """Read every run folder in `paths` and rank them. `reference` gives, by run label, a
    published accuracy to show beside each run's under `reference_title`."""
    if not paths:
        raise CnnlabError("no run folders to compare: expected at least one RUN")
    runs = [load_run(path) for path in paths]
    _disambiguate_labels(runs)
    for run in runs:
        run.reference_acc = (reference or {}).get(run.label)
    ranked = sorted(runs, key=lambda run: -run.test_acc if run.test_acc is not None else math.inf)
    return Leaderboard(ranked, reference_title if reference is not None else None)


def load_run(path: str | Path) -> ComparedRun:
    """One run folder as a leaderboard row with its curves and confusion matrix."""
    folder = _run_folder(path)
    config = config_from(load_toml(folder.config_file))
    history = read_history(folder.path / "metrics.jsonl")
    evaluation = read_evaluation(folder.path / "evaluation.json")
    channels, classes = _model_inputs(folder, evaluation)
    size = [channels, config.resize, config.resize] if channels and config.resize else None
    params, macs = (None, None)
    if size and classes:
        params, macs = _model_cost(folder.path, config, size, len(classes))
    best_val = max(
        (record for record in history if _number(record.get("val_acc")) is not None),
        key=lambda record: record["val_acc"],
        default=None,
    )
    return ComparedRun(
        label=folder.path.name,
        path=str(folder.path),
        model=config.model,
        dataset=config.dataset,
        status=_status(folder, evaluation, len(history), config.epochs),
        epochs_run=len(history),
        epochs_planned=config.epochs,
        input_size=size,
        params=params,
        macs=macs,
        best_val_acc=best_val["val_acc"] if best_val else None,
        best_val_epoch=best_val["epoch"] if best_val else None,
        test_acc=evaluation.get("acc"),
        eval_split=evaluation.get("split"),
        train_seconds=_total(history, "seconds"),
        images_per_s=_throughput(history),
        curves=_curves(history),
        classes=classes,
        confusion=evaluation.get("confusion"),
    )


def read_history(path: Path) -> list[dict]:
    """The per-epoch records of metrics.jsonl; none when the run stopped before its first."""
    if not path.is_file():
        return []
    history = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CnnlabError(f"{path} line {number} is not JSON: {error}") from None
        if not isinstance(record, dict) or _number(record.get("epoch")) is None:
            raise CnnlabError(f"{path} line {number}: expected an epoch record, found {line!r}")
        history.append(record)
    return history


def read_evaluation(path: Path) -> dict:
    """evaluation.json with its classes (the per-class keys, in order); {} when absent."""
    if not path.is_file():
        return {}
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CnnlabError(f"cannot read the run's final evaluation {path}: {error}") from None
    if not isinstance(evaluation, dict) or _number(evaluation.get("acc")) is None:
        raise CnnlabError(f"{path}: expected an evaluation with an accuracy 'acc', found none")
    per_class = evaluation.get("per_class_acc")
    classes = list(per_class) if isinstance(per_class, dict) else []
    confusion = evaluation.get("confusion")
    if confusion is not None and not _is_square(confusion, len(classes)):
        raise CnnlabError(
            f"{path}: expected 'confusion' to be a {len(classes)}x{len(classes)} matrix of "
            f"counts, one row and column per class of 'per_class_acc'; found something else"
        )
    evaluation["classes"] = classes
    return evaluation


def _is_square(matrix, size: int) -> bool:
    return (
        isinstance(matrix, list)
        and len(matrix) == size > 0
        and all(isinstance(row, list) and len(row) == size for row in matrix)
        and all(_number(count) is not None for row in matrix for count in row)
    )


def format_leaderboard(board: Leaderboard) -> str:
    """The leaderboard as an aligned text table, with what it is sorted by."""
    header = leaderboard_header(board)
    rows = [leaderboard_cells(board, rank, run) for rank, run in enumerate(board.runs, 1)]
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    left = {1, 2, len(header) - 1}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    notes = [SORT_NOTE, "MACs: multiply-accumulates per image; time: training epochs only"]
    return "\n".join([line(header), *map(line, rows), "", *notes])


def leaderboard_header(board: Leaderboard) -> list[str]:
    header = ["#", "run", "model", "params", "MACs", "best val", "test acc"]
    if board.reference_title:
        header.append(board.reference_title)
    return [*header, "time", "images/s", "status"]


def leaderboard_cells(board: Leaderboard, rank: int, run: ComparedRun) -> list[str]:
    """One row of the leaderboard as text, in the order of leaderboard_header."""
    cells = [
        str(rank),
        run.label,
        run.model,
        count_text(run.params),
        count_text(run.macs),
        accuracy_text(run.best_val_acc),
        accuracy_text(run.test_acc),
    ]
    if board.reference_title:
        cells.append(accuracy_text(run.reference_acc))
    cells += [
        seconds_text(run.train_seconds),
        f"{run.images_per_s:,.0f}" if run.images_per_s is not None else MISSING,
        run.status,
    ]
    return cells


def count_text(count: int | None) -> str:
    if count is None:
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def accuracy_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _run_folder(path: str | Path) -> RunFolder:
    if not Path(path).is_dir():
        raise CnnlabError(f"{path} is not a cnnlab run folder: no such folder")
    return RunFolder.existing(path)


def _status(folder: RunFolder, evaluation: dict, epochs_run: int, epochs_planned: int) -> str:
    if evaluation:
        return "finished"
    # summary.txt is written last, also by a run that had no split to evaluate on
    if (folder.path / "summary.txt").is_file():
        return "finished, not evaluated"
    return f"unfinished: {epochs_run} of {epochs_planned} epochs"


def _model_inputs(folder: RunFolder, evaluation: dict) -> tuple[int | None, list[str]]:
    """The input channels and class names the run's model was built for, from the final
    weights' description or else the run identity in its newest readable checkpoint."""
    described = _json_metadata(folder.weights, WEIGHTS_KEY)
    if not described:
        for path in folder.resume_candidates():
            state = _json_metadata(path, CHECKPOINT_KEY).get("state")
            described = state.get("run") if isinstance(state, dict) else None
            if isinstance(described, dict):
                break
    described = described if isinstance(described, dict) else {}
    channels = described.get("in_channels")
    classes = described.get("classes")
    if not isinstance(classes, list) or not classes:
        classes = evaluation.get("classes", [])
    return (channels if type(channels) is int else None), [str(name) for name in classes]


def _json_metadata(path: Path, key: str) -> dict:
    """The JSON object stored under metadata `key` of a safetensors file, read from its header
    alone; {} when the file is missing or unreadable (the figures it holds become dashes)."""
    if not path.is_file():
        return {}
    try:
        with safe_open(path, framework="pt") as file:
            value = json.loads((file.metadata() or {}).get(key, "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _model_cost(path: Path, config, input_size: list[int], num_classes: int) -> tuple[int, int]:
    """Parameters and MACs per image of the run's model at its input size."""
    try:
        with torch.device("meta"):
            model = create_model(
                config.model,
                num_classes=num_classes,
                in_channels=input_size[0],
                **config.model_options,
            )
    except (TypeError, ValueError) as error:
        raise CnnlabError(
            f"run folder {path}: cannot build its model {config.model} with "
            f"{config.model_options}: {error}"
        ) from None
    summary = summarize(model, tuple(input_size))
    return summary.total_params, summary.total_macs


def _total(history: list[dict], key: str) -> float | None:
    values = [_number(record.get(key)) for record in history]
    if not values or None in values:
        return None
    return sum(values)


def _throughput(history: list[dict]) -> float | None:
    """Training images per second over all epochs: each epoch's recorded rate weighted by its
    recorded time (images seen / seconds); the plain mean where the times round to zero."""
    rates = [_number(record.get("images_per_s")) for record in history]
    if not rates or None in rates:
        return None
    seconds = _total(history, "seconds")
    if not seconds:
        return sum(rates) / len(rates)
    images = sum(rate * record["seconds"] for rate, record in zip(rates, history, strict=True))
    return images / seconds


def _curves(history: list[dict]) -> dict[str, list]:
    curves = {"epoch": [int(record["epoch"]) for record in history]}
    for key in CURVE_KEYS:
        curves[key] = [_number(record.get(key)) for record in history]
    return curves


def _number(value) -> float | None:
    """`value` if it is a finite number (a diverged epoch's NaN becomes a gap), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _disambiguate_labels(runs: list[ComparedRun]) -> None:
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = run.path
