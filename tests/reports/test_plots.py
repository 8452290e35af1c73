"""The training pictures: valid PNGs, written atomically, with the parts they promise drawn.

"Drawn" is checked by colour: validation curves are tab:orange, the suggested learning rate is
tab:red and a class with no samples is a grey row, so counting those exact pixels tells
whether the part is on the picture.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.reports.plots import plot_confusion, plot_curves, plot_lr_find

ORANGE = (255, 127, 14)  # tab:orange, the validation curves
RED = (214, 39, 40)  # tab:red, the suggested learning rate
NO_SAMPLES_GREY = (216, 216, 216)  # "0.85" grey, a confusion row with no samples
STRAY = 100  # edges of antialiased text can hit a colour exactly; a drawn part has far more
CLASSES = ["cat", "dog", "bird", "fish"]


def history(epochs, validation=True):
    entries = []
    for epoch in range(1, epochs + 1):
        entry = {"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": 0.5 + 0.04 * epoch}
        entry["val_loss"] = 2.2 / epoch if validation else None
        entry["val_acc"] = 0.45 + 0.04 * epoch if validation else None
        entry["lr"] = 0.1
        entries.append(entry)
    return entries


def read_png(path):
    """Open `path` as a PNG of a sensible size and return its pixels as RGB."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 300 <= width <= 3000 and 300 <= height <= 3000, image.size
        return np.asarray(image.convert("RGB"))


def pixels_of(image, colour):
    return int((image == np.array(colour, dtype=np.uint8)).all(axis=-1).sum())


def only_file(folder, name):
    """Assert that `name` is the only thing in `folder`: no temp file was left behind."""
    assert sorted(p.name for p in folder.iterdir()) == [name]
    return folder / name


def test_curves_draw_train_and_validation(tmp_path):
    plot_curves(history(10), tmp_path / "curves.png", title="lenet on fashion_mnist")
    image = read_png(only_file(tmp_path, "curves.png"))
    assert pixels_of(image, ORANGE) > 3 * STRAY


def test_curves_with_one_epoch_and_no_validation(tmp_path):
    plot_curves(history(1, validation=False), tmp_path / "curves.png")
    image = read_png(only_file(tmp_path, "curves.png"))
    assert pixels_of(image, ORANGE) < STRAY


def test_curves_without_validation_keys_or_with_a_diverged_epoch(tmp_path):
    entries = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5} for e in (1, 2, 3)]
    entries[1]["train_loss"] = float("nan")
    entries[2]["train_loss"] = float("inf")
    plot_curves(entries, tmp_path / "curves.png")
    read_png(only_file(tmp_path, "curves.png"))


def test_curves_of_an_empty_history_are_refused(tmp_path):
    with pytest.raises(CnnlabError, match="history is empty"):
        plot_curves([], tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_confusion_from_a_tensor_with_a_class_that_has_no_samples(tmp_path):
    confusion = torch.tensor([[50, 3, 0, 1], [0, 0, 0, 0], [5, 2, 40, 0], [1, 0, 0, 30]])
    plot_confusion(confusion, CLASSES, tmp_path / "confusion.png", title="test set")
    image = read_png(only_file(tmp_path, "confusion.png"))
    assert pixels_of(image, NO_SAMPLES_GREY) > 30 * STRAY


def test_confusion_without_empty_rows_has_no_grey_row(tmp_path):
    confusion = np.array([[50, 3, 0, 1], [2, 44, 0, 0], [5, 2, 40, 0], [1, 0, 0, 30]])
    plot_confusion(confusion, CLASSES, tmp_path / "confusion.png")
    assert pixels_of(read_png(tmp_path / "confusion.png"), NO_SAMPLES_GREY) < STRAY


def test_confusion_counts_are_not_normalised(tmp_path):
    confusion = np.array([[50, 3, 0, 1], [0, 0, 0, 0], [5, 2, 40, 0], [1, 0, 0, 30]])
    plot_confusion(confusion, CLASSES, tmp_path / "counts.png", normalize=False)
    # Raw counts have no "no rate" cells: the empty row is a row of zeros, not grey.
    assert pixels_of(read_png(only_file(tmp_path, "counts.png")), NO_SAMPLES_GREY) < STRAY


@pytest.mark.parametrize("classes", [25, 70])
def test_confusion_of_many_classes(tmp_path, classes):
    # 25: too many to annotate cells; 70: too many to name on the axes.
    confusion = np.random.default_rng(0).integers(0, 5, (classes, classes)) + 50 * np.eye(classes)
    names = [f"class_{i}" for i in range(classes)]
    plot_confusion(confusion, names, tmp_path / "confusion.png")
    read_png(only_file(tmp_path, "confusion.png"))


def test_confusion_that_does_not_match_the_classes_is_refused(tmp_path):
    with pytest.raises(CnnlabError, match=r"expected a 4x4 matrix .* found shape \(3, 3\)"):
        plot_confusion(np.eye(3), CLASSES, tmp_path / "confusion.png")
    assert list(tmp_path.iterdir()) == []


def lr_test(steps=60):
    lrs = np.logspace(-5, 1, steps)
    losses = 2.3 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 2.5) * 3))
    losses[-5:] = [3.0, 10.0, 100.0, float("inf"), float("nan")]  # the explosion that ends it
    return lrs.tolist(), losses.tolist()


def test_lr_find_marks_the_suggestion(tmp_path):
    lrs, losses = lr_test()
    plot_lr_find(lrs, losses, 1e-2, tmp_path / "lr_find.png")
    assert pixels_of(read_png(only_file(tmp_path, "lr_find.png")), RED) > 3 * STRAY


def test_lr_find_without_a_suggestion(tmp_path):
    lrs, losses = lr_test()
    plot_lr_find(lrs, losses, None, tmp_path / "lr_find.png")
    assert pixels_of(read_png(only_file(tmp_path, "lr_find.png")), RED) < STRAY


def test_lr_find_with_one_point(tmp_path):
    plot_lr_find([1e-3], [2.3], 1e-3, tmp_path / "lr_find.png")
    read_png(only_file(tmp_path, "lr_find.png"))


@pytest.mark.parametrize(
    ("lrs", "losses", "suggested", "message"),
    [
        ([1e-3, 1e-2], [2.3], None, "2 rates and 1 losses"),
        ([], [], None, "at least one"),
        ([0.0, 1e-2], [2.3, 2.0], None, "positive learning rates"),
        ([1e-3, 1e-2], [2.3, 2.0], -1.0, "positive learning rates"),
    ],
)
def test_lr_find_refuses_bad_input(tmp_path, lrs, losses, suggested, message):
    with pytest.raises(CnnlabError, match=message):
        plot_lr_find(lrs, losses, suggested, tmp_path / "lr_find.png")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_picture_is_replaced(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    plot_curves(history(2), target)
    read_png(only_file(tmp_path, "curves.png"))


def test_a_missing_folder_is_reported(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        plot_curves(history(2), tmp_path / "absent" / "curves.png")


def test_no_pyplot_so_no_figures_are_kept(tmp_path):
    # pyplot's registry is what keeps figures open; if it is never imported, none can leak.
    # A fresh interpreter, since other tests may have imported pyplot into this one.
    script = f"""
import sys, numpy as np
from cnnlab.reports.plots import plot_confusion, plot_curves, plot_lr_find
folder = {str(tmp_path)!r}
plot_curves([{{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}}], folder + "/c.png")
plot_confusion(np.eye(2), ["a", "b"], folder + "/m.png")
plot_lr_find([1e-3, 1e-2], [2.0, 1.0], 1e-2, folder + "/l.png")
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "l.png", "m.png"]
