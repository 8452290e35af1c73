"""The learning-rate range test: the schedule it sweeps, where it stops, what it suggests, and
that it leaves nothing behind."""

import gzip
import math
import struct

import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.reports.plots import plot_lr_find
from cnnlab.runs.config import TrainConfig
from cnnlab.studies.lr_find import LrFindResult, format_lr_find, lr_find, suggest_lr


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def striped_data(tmp_path):
    """A fake Fashion-MNIST that a LeNet learns within a few batches: each class is a bright
    band of rows at its own height over dim noise. Returns the data root."""
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 120), ("t10k", 20)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for image, label in zip(images, labels, strict=True):
            image[2 * label + 4 : 2 * label + 8, :] += 190
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path / "data"


def config(data_root, model="lenet_bn"):
    return TrainConfig(
        model=model, data_dir=str(data_root), batch_size=16, device="cpu", quiet=True
    )


def test_sweeps_exponentially_and_suggests_a_rate_where_the_loss_falls(
    striped_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # 20 batches of 16 from 120 images: the sweep runs through three epochs.
    result = lr_find(config(striped_data), start_lr=1e-3, end_lr=10.0, steps=20, smoothing=0.9)
    assert not result.stopped_early and len(result.lrs) == len(result.losses) == 20
    assert result.lrs[0] == pytest.approx(1e-3) and result.lrs[-1] == pytest.approx(10.0)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, math.log(1e4) / 19)  # the same factor every batch
    assert all(math.isfinite(loss) for loss in result.losses)
    lowest = int(np.argmin(result.losses))
    assert result.losses[lowest] < result.losses[2] - 0.2  # the curve does come down
    assert 1e-3 <= result.suggested < result.lrs[lowest]
    # Throwaway model and optimiser: no run folder, no file of any kind.
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    plot_lr_find(result.lrs, result.losses, result.suggested, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_stops_when_the_loss_diverges(striped_data):
    result = lr_find(config(striped_data, "lenet"), start_lr=1e-2, end_lr=1e8, steps=30)
    assert result.stopped_early and 2 <= len(result.lrs) < 30
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.losses[-1] > 4.0 * min(result.losses)  # the rule that stopped it
    assert "stopped early" in format_lr_find(result)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = list(np.logspace(-4, 1, 11))  # evenly spaced in log lr
    # Flat, then falling fastest around index 5, lowest at index 7, then rising.
    losses = [2.3, 2.3, 2.3, 2.25, 2.2, 1.6, 1.3, 1.2, 1.5, 1.2, 9.0]
    assert suggest_lr(lrs, losses) == pytest.approx(lrs[5])
    # A steeper fall after the minimum (5.0 -> 2.5 around index 7) is already divergence.
    recovering = [2.3, 2.3, 2.0, 1.5, 1.0, 2.0, 5.0, 3.0, 2.5, 4.0, 6.0]
    assert suggest_lr(lrs, recovering) == pytest.approx(lrs[3])
    # The first tenth is too noisy to count: a low first batch is not "the minimum".
    noisy_start = [0.5, 2.3, 2.2, 1.8, 1.2, 1.0, 1.1, 3.0, 5.0, 7.0, 9.0]
    assert suggest_lr(lrs, noisy_start) == pytest.approx(lrs[3])


def test_one_lucky_batch_is_not_the_steepest_descent():
    lrs = list(np.logspace(-6, 1, 100))
    losses = [2.3] * 40 + list(np.linspace(2.3, 0.5, 40)) + list(np.linspace(0.6, 9.0, 20))
    losses[20] = 2.0  # a single low batch: steeper than the real descent point to point
    # Slopes over a tenth of the sweep see through it and land inside the real descent.
    assert lrs[40] <= suggest_lr(lrs, losses) <= lrs[79]


def test_no_suggestion_when_the_loss_never_falls():
    lrs = list(np.logspace(-6, 1, 20))
    assert suggest_lr(lrs, [2.3 + 0.01 * i for i in range(20)]) is None
    assert suggest_lr(lrs, [2.3] * 20) is None
    assert suggest_lr([], []) is None and suggest_lr(lrs[:1], [2.3]) is None
    result = LrFindResult(lrs, [2.3 + 0.01 * i for i in range(20)], None, False)
    assert "no suggestion" in format_lr_find(result)


def test_format_names_the_suggestion_and_the_range():
    result = LrFindResult([1e-3, 1e-2, 1e-1], [2.3, 2.0, 1.5], 0.01, False)
    text = format_lr_find(result)
    assert "3 batches, lr 0.001 to 0.1" in text and "suggested lr: 0.01" in text
    assert "NaN" in format_lr_find(LrFindResult([], [], None, True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "start lr < end lr"),
        ({"start_lr": 0.0}, "start lr < end lr"),
        ({"steps": 1}, "at least 2 steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge": 1.0}, "divergence factor"),
    ],
)
def test_bad_options_are_refused_before_anything_is_built(options, message):
    # A data folder that does not exist: the options are checked before any data is loaded.
    with pytest.raises(CnnlabError, match=message):
        lr_find(TrainConfig(model="lenet", data_dir="/nonexistent/cnnlab"), **options)
