"""Stratified k-fold cross-validation: how well does a training recipe do, and how much does
that vary with the data it happens to see?

The training split is cut into k folds that keep each class's share
(`data.splits.stratified_kfold`); fold i trains a fresh model on the other k - 1 folds and
measures it on fold i, with normalisation statistics from its own training folds only. The
estimate is the mean of the k accuracies ± their sample standard deviation. The test split is
never loaded: it stays untouched for the final model.

Each fold is an ordinary run folder (`<root>/fold-<i>`) with everything a training run writes;
`<root>/cross_validation.json` holds the per-fold results, the mean and std, and the config.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data import load_dataset
from cnnlab.data.splits import stratified_kfold
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes
from cnnlab.runs.config import TrainConfig
from cnnlab.train.setup import RunData
from cnnlab.train.trainer import Trainer

RESULT_FILE = "cross_validation.json"


@dataclass
class CrossValidation:
    fold_accs: list[float]  # the accuracy of fold i's model on fold i
    mean: float
    std: float  # sample standard deviation (ddof=1) over the folds
    fold_dirs: list[str]  # fold i's run folder


def cross_validate(
    config: TrainConfig, folds: int, out: str | None = None, echo=print
) -> CrossValidation:
    """Train `folds` models, each validated on the fold it did not see; write the summary to
    `<root>/cross_validation.json`, root being `out`, else `config.out`, else
    runs/<model>-<dataset>-cv-<timestamp>. `config.val_split` is ignored: each fold's
    held-out part is its validation set."""
    config = _checked(config, folds)
    train = load_dataset(config.dataset, "train", root=config.data_dir, progress=not config.quiet)
    splits = stratified_kfold(train.labels, folds, config.seed)
    root = _create_root(Path(out or config.out or _default_root(config)))
    records = [
        _run_fold(config, train, fold + 1, folds, train_idx, val_idx, root, echo)
        for fold, (train_idx, val_idx) in enumerate(splits)
    ]
    result = _summarise(records)
    _write_result(root, config, folds, records, result)
    return result


def format_cross_validation(result: CrossValidation) -> str:
    """A per-fold table and the mean ± std."""
    lines = ["fold  accuracy  run folder"]
    for fold, (acc, folder) in enumerate(zip(result.fold_accs, result.fold_dirs, strict=True)):
        lines.append(f"{fold + 1:>4}  {acc:>8.4f}  {folder}")
    lines.append(
        f"accuracy over {len(result.fold_accs)} folds: {result.mean:.4f} ± {result.std:.4f} "
        f"(mean ± sample std)"
    )
    return "\n".join(lines)


def _checked(config: TrainConfig, folds: int) -> TrainConfig:
    if not isinstance(folds, int) or folds < 2:
        raise CnnlabError(f"cross-validation needs --folds of at least 2, got {folds!r}")
    if config.early_stopping:
        # Early stopping would pick each fold's epoch on the very fold that scores it, biasing
        # the estimate upwards.
        raise CnnlabError(
            "early stopping cannot be combined with cross-validation: it would choose each "
            "fold's weights on the held-out fold that measures them; drop --early-stopping"
        )
    return dataclasses.replace(config, val_split=0.0).resolved()


def _run_fold(
    config: TrainConfig, train, fold: int, folds: int, train_idx, val_idx, root: Path, echo
) -> dict:
    """Train on every fold but `fold` into `<root>/fold-<fold>`; its record for the summary."""
    base = train.name.rsplit("/", 1)[0]
    fold_train = train.subset(train_idx, f"{base}/cv-fold-{fold}-train")
    fold_val = train.subset(val_idx, f"{base}/cv-fold-{fold}")
    mean, std = fold_train.mean_std()  # from the training folds only: no peeking
    data = RunData(fold_train, fold_val, None, mean.tolist(), std.tolist())
    echo(
        f"cross-validation fold {fold}/{folds}: training on {len(fold_train):,} images, "
        f"validating on {len(fold_val):,}"
    )
    fold_dir = root / f"fold-{fold}"
    fold_config = dataclasses.replace(config, out=str(fold_dir), val_split=0.0)
    Trainer(fold_config, echo=echo, data=data).fit()
    evaluation = _read_evaluation(fold_dir)
    return {
        "fold": fold,
        "acc": evaluation["acc"],
        "loss": evaluation["loss"],
        "train_images": len(fold_train),
        "val_images": len(fold_val),
        "dir": str(fold_dir),
    }


def _default_root(config: TrainConfig) -> Path:
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.dataset).name)
    return Path("runs") / f"{config.model}-{dataset}-cv-{time.strftime('%Y%m%d-%H%M%S')}"


def _create_root(root: Path) -> Path:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CnnlabError(
            f"cross-validation folder {root} already exists and is not an empty folder: "
            f"choose another --out"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(
            f"cannot create cross-validation folder {root}: {error.strerror}"
        ) from None
    return root


def _read_evaluation(fold_dir: Path) -> dict:
    """The final evaluation the trainer wrote; without a test set it is the validation fold."""
    path = fold_dir / "evaluation.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CnnlabError(f"cannot read the fold's final evaluation {path}: {error}") from None


def _summarise(records: list[dict]) -> CrossValidation:
    accs = [record["acc"] for record in records]
    return CrossValidation(
        fold_accs=accs,
        mean=statistics.fmean(accs),
        std=statistics.stdev(accs),
        fold_dirs=[record["dir"] for record in records],
    )


def _write_result(
    root: Path, config: TrainConfig, folds: int, records: list[dict], result: CrossValidation
) -> None:
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "folds": folds,
        "seed": config.seed,
        "per_fold": records,
        "mean_acc": result.mean,
        "std_acc": result.std,
        "config": dataclasses.asdict(dataclasses.replace(config, out=str(root))),
    }
    atomic_write_bytes(root / RESULT_FILE, (json.dumps(summary, indent=2) + "\n").encode())
