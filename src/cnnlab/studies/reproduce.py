"""Reproducing the classic results: train each network the way "Dive into Deep Learning" does
and put our test accuracy beside the one the book printed.

The recipes are TOML training configs in the repository's recipes/d2l folder, one per network,
with d2l's hyperparameters for Fashion-MNIST (plain SGD, 10 epochs, the book's batch size,
learning rate and input size). `reproduce_d2l` runs them one after another, each into its own
run folder, and returns one row per network: published accuracy, ours, epochs, seconds and
the run folder. `report_d2l` puts those runs in the HTML comparison (reports/html_report.py), the
book's figure beside each network's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import fields
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes
from cnnlab.runs.config import TrainConfig, config_from, load_toml
from cnnlab.train.trainer import Trainer

# The recipes live at the repository root, beside src/ (this file is src/cnnlab/studies/).
RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes" / "d2l"

# The final test accuracy d2l printed for each 10-epoch Fashion-MNIST run when the book was
# built: "Dive into Deep Learning", Zhang, Lipton, Li & Smola, PyTorch code, as published at
# zh-v2.d2l.ai, the edition whose hyperparameters the recipes hold (sections 6.6 LeNet and
# 7.1-7.7 AlexNet, VGG, NiN, GoogLeNet, batch normalization, ResNet, DenseNet; the English
# edition's newer builds train with settings of their own and print no figures). Each is a
# single run on a GPU, measured after the last epoch, so they are approximate: LeNet-BN's
# from-scratch version printed 0.807 and the same network built from nn.BatchNorm2d 0.708 in
# the same section.
D2L_PUBLISHED = {
    "lenet": 0.779,
    "alexnet": 0.885,
    "vgg11": 0.920,
    "nin": 0.772,
    "googlenet": 0.886,
    "lenet_bn": 0.807,
    "resnet18": 0.893,
    "densenet": 0.885,
}


def recipe_folder(recipes_dir: str | Path | None = None) -> Path:
    """`recipes_dir`, else the repository's recipes/d2l; an error if it does not exist."""
    folder = Path(recipes_dir) if recipes_dir is not None else RECIPES_DIR
    if not folder.is_dir():
        raise CnnlabError(
            f"the d2l recipes folder {folder} does not exist: the recipes ship in the cnnlab "
            f"repository (recipes/d2l); give the folder that holds them"
        )
    return folder


def load_recipe(name: str, recipes_dir: str | Path | None = None) -> TrainConfig:
    """The training config of recipe `name` (e.g. "lenet", "densenet")."""
    folder = recipe_folder(recipes_dir)
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
        raise CnnlabError(f"no d2l recipe {name!r}: {path} does not exist; recipes: {known}")
    return config_from(load_toml(path))


def reproduce_d2l(
    models: list[str] | None = None,
    epochs: int | None = None,
    data_dir: str | None = None,
    out: str | None = None,
    echo=print,
    recipes_dir: str | Path | None = None,
    overrides: dict | None = None,
) -> list[dict]:
    """Train each recipe in `models` (default: all of D2L_PUBLISHED, in the book's order) into
    `<out>/<name>` (default out: runs/d2l-<timestamp>), `epochs` replacing the recipe's 10 if
    given, `overrides` any other setting (e.g. {"device": "cpu", "quiet": True}). Returns a row
    per recipe and writes them to `<out>/reproduction.json`."""
    names = list(models) if models else list(D2L_PUBLISHED)
    changes = _changes(epochs, data_dir, overrides)
    # Every recipe is read and checked before the first one trains for an hour.
    configs = [dataclasses.replace(load_recipe(n, recipes_dir), **changes) for n in names]
    for config in configs:
        config.resolved()
    root = Path(out) if out else Path("runs") / f"d2l-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for name, config in zip(names, configs, strict=True):
        echo(f"reproducing d2l's {name} ({len(rows) + 1}/{len(names)})")
        trainer = Trainer(dataclasses.replace(config, out=str(root / name)), echo=echo)
        started = time.perf_counter()
        history = trainer.fit()
        seconds = time.perf_counter() - started
        rows.append(
            {
                "model": name,
                "published": D2L_PUBLISHED.get(name),
                "ours": _test_accuracy(trainer.run.path),
                "epochs": len(history),
                "seconds": round(seconds, 1),
                "run": str(trainer.run.path),
            }
        )
        atomic_write_bytes(root / "reproduction.json", (json.dumps(rows, indent=2) + "\n").encode())
    return rows


def format_reproduction(rows: list[dict]) -> str:
    """Our test accuracy beside d2l's, one line per network."""
    lines = [f"{'model':<10}  {'d2l':>6}  {'ours':>6}  {'diff':>7}  {'epochs':>6}  {'time':>8}"]
    for row in rows:
        published, ours = row["published"], row["ours"]
        known = published is not None
        lines.append(
            f"{row['model']:<10}  {f'{published:.3f}' if known else '-':>6}  {ours:>6.3f}  "
            f"{f'{ours - published:+.3f}' if known else '-':>7}  {row['epochs']:>6}  "
            f"{row['seconds']:>6.1f} s"
        )
    lines.append(
        "d2l: the test accuracy the book printed for one 10-epoch run (approximate: single "
        "runs vary by a point or more)"
    )
    return "\n".join(lines)


def report_d2l(rows: list[dict], path: str | Path | None = None) -> Path:
    """Write the HTML comparison of the runs in `rows` (see reproduce_d2l), d2l's published
    accuracy beside each, to `path` (default: report.html beside the runs); return the path."""
    from cnnlab.reports.compare import compare_runs
    from cnnlab.reports.html_report import write_html_report

    if not rows:
        raise CnnlabError("no reproduced runs to report on: expected at least one")
    runs = [row["run"] for row in rows]
    board = compare_runs(runs, reference=D2L_PUBLISHED, reference_title="d2l acc")
    target = Path(path) if path else Path(runs[0]).parent / "report.html"
    title = "Reproducing Dive into Deep Learning on Fashion-MNIST"
    return write_html_report(board, target, title=title)


def _changes(epochs: int | None, data_dir: str | None, overrides: dict | None) -> dict:
    changes = dict(overrides or {})
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise CnnlabError(f"unknown training setting(s) {', '.join(unknown)} to override")
    if epochs is not None:
        changes["epochs"] = epochs
    if data_dir is not None:
        changes["data_dir"] = data_dir
    return changes


def _test_accuracy(run_path: Path) -> float:
    path = run_path / "evaluation.json"
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CnnlabError(f"cannot read the run's final evaluation {path}: {error}") from None
    return evaluation["acc"]
