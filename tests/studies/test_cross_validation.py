"""k-fold cross-validation: one run folder per fold, the summary, and a test set never read."""

import json
import statistics

import pytest

from cnnlab.data import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.runs.config import TrainConfig
from cnnlab.studies import cross_validation as cv_module
from cnnlab.studies.cross_validation import (
    CrossValidation,
    cross_validate,
    format_cross_validation,
)
from cnnlab.train import setup as train_setup


@pytest.fixture
def no_test_split(monkeypatch):
    """Make loading any test split an error, wherever training code loads data from."""

    def train_only(name, split=None, *args, **kwargs):
        if split == "test":
            raise AssertionError("cross-validation loaded the test split")
        return load_dataset(name, split, *args, **kwargs)

    monkeypatch.setattr(cv_module, "load_dataset", train_only)
    monkeypatch.setattr(train_setup, "load_dataset", train_only)


def config(data_root, **changes):
    return TrainConfig(
        model="lenet",
        data_dir=str(data_root),
        epochs=1,
        batch_size=32,
        device="cpu",
        quiet=True,
        **changes,
    )


def test_three_folds(fake_data, tmp_path, no_test_split):
    root = tmp_path / "cv"
    lines = []
    # val_split is ignored: each fold's held-out part is its validation set.
    result = cross_validate(config(fake_data, val_split=0.2), 3, out=str(root), echo=lines.append)
    assert result.fold_dirs == [str(root / f"fold-{i}") for i in (1, 2, 3)]
    for folder, acc in zip(result.fold_dirs, result.fold_accs, strict=True):
        evaluation = json.loads((root / folder / "evaluation.json").read_text())
        # The final evaluation is on the held-out fold: 120 images / 3, never the test set.
        assert evaluation["acc"] == acc and evaluation["count"] == 40
        assert evaluation["split"].startswith("fashion-mnist/cv-fold-")
        assert (root / folder / "model.safetensors").is_file()
    assert result.mean == pytest.approx(statistics.fmean(result.fold_accs))
    assert result.std == pytest.approx(statistics.stdev(result.fold_accs))
    summary = json.loads((root / "cross_validation.json").read_text())
    assert [fold["acc"] for fold in summary["per_fold"]] == result.fold_accs
    assert [fold["val_images"] for fold in summary["per_fold"]] == [40, 40, 40]
    assert summary["mean_acc"] == result.mean and summary["std_acc"] == result.std
    assert summary["config"]["model"] == "lenet" and summary["config"]["val_split"] == 0.0
    assert any("fold 3/3" in line for line in lines)


def test_format_shows_each_fold_and_mean_plus_minus_std():
    result = CrossValidation([0.8, 0.9], 0.85, 0.0707, ["cv/fold-1", "cv/fold-2"])
    text = format_cross_validation(result)
    assert "   1    0.8000  cv/fold-1" in text and "   2    0.9000  cv/fold-2" in text
    assert "0.8500 ± 0.0707" in text


def test_refusals(fake_data, tmp_path):
    with pytest.raises(CnnlabError, match="at least 2"):
        cross_validate(config(fake_data), 1, out=str(tmp_path / "cv"))
    with pytest.raises(CnnlabError, match="early stopping"):
        cross_validate(config(fake_data, early_stopping=2, val_split=0.2), 3)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(CnnlabError, match="not an empty folder"):
        cross_validate(config(fake_data), 2, out=str(taken))
    with pytest.raises(CnnlabError, match=r"k-fold needs 2 <= k"):
        cross_validate(config(fake_data), 121, out=str(tmp_path / "too-many"))
    assert not (tmp_path / "too-many").exists()  # refused before anything was written
