"""Using a trained model: `cnnlab eval` (a dataset split) and `cnnlab predict` (image files).

Both start from a run folder or its `model.safetensors`, whose metadata (see report.py) says how
to rebuild the network and how it was fed: its classes, the stored image size, the resize
(`input_size`) and the training set's per-channel mean and std. Images go through the same
evaluation pipeline as in training (to [0, 1], resize, normalise; never augmentation), with the
model in eval mode (dropout off, BatchNorm on its running statistics).

A user's own image is read as training images were: PNG or JPEG only, checked as strictly as an
image folder (cnnlab.data.folder), converted to the model's channels (Pillow "L" for 1, "RGB"
for 3, transparency composited on black) and resized with Pillow's bilinear filter to the
stored training size before the pipeline resizes it to the input size.

Inversion caveat: Fashion-MNIST, MNIST and KMNIST show light objects on a black background. A
photo of a dark object on a white background is the negative of what such a model has seen and
is classified poorly; `invert=True` (`cnnlab predict --invert`) turns it into 255 - value first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnlab.data import ImageSet, load_dataset
from cnnlab.data.augment import BatchPipeline
from cnnlab.data.folder import BadImage, decode_image
from cnnlab.data.loader import InMemoryLoader
from cnnlab.errors import CheckpointError, CnnlabError, DataFormatError
from cnnlab.train import metrics
from cnnlab.train.checkpoint import load_model
from cnnlab.train.evaluate import Evaluation, evaluate
from cnnlab.train.setup import resolve_device, weights_path

# What inference needs from the metadata beyond what load_model needs to build the network.
TRAINING_KEYS = ("classes", "dataset", "image_size", "input_size", "mean", "std")
# Class names up to this long label the confusion matrix's rows and columns; longer ones are
# replaced by their indices, which the per-class table above it explains.
SHORT_LABEL = 5


def load_trained(run_or_weights: str) -> tuple[nn.Module, dict]:
    """The model (eval mode, CPU) and metadata of a run folder or weights file written by a
    training run; refuses files that do not say how their images were prepared."""
    path = weights_path(run_or_weights)
    if path != Path(run_or_weights) and not path.exists():
        raise CheckpointError(
            f"{run_or_weights} has no model.safetensors: the run has not finished (resume it with "
            f"cnnlab train --resume {run_or_weights}) or the folder is not a run folder"
        )
    model, metadata = load_model(path)
    missing = [key for key in TRAINING_KEYS if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{path} has no training metadata ({', '.join(missing)} missing): cnnlab cannot tell "
            "how its images were prepared; expected the model.safetensors of a cnnlab training run"
        )
    return model, metadata


def eval_pipeline(metadata: dict) -> BatchPipeline:
    """The evaluation pipeline the run used: its statistics and input size, no augmentation."""
    return BatchPipeline(metadata["mean"], metadata["std"], size=metadata["input_size"])


# ---- evaluating on a dataset ------------------------------------------------------------------


def evaluate_saved(
    run_or_weights: str,
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> tuple[Evaluation, list[str], dict]:
    """Evaluate a trained model on a split of its own dataset (or of `dataset`); returns the
    evaluation, the class names and the weights' metadata."""
    model, metadata = load_trained(run_or_weights)
    data = load_dataset(dataset or metadata["dataset"], split, root=data_dir)
    check_fits(data, metadata, run_or_weights)
    target = resolve_device(device)
    loader = InMemoryLoader(
        data.images,
        data.labels,
        batch_size,
        shuffle=False,
        device=target,
        pipeline=eval_pipeline(metadata),
    )
    evaluation = evaluate(model.to(target), loader, metadata["num_classes"], target)
    return evaluation, list(metadata["classes"]), metadata


def check_fits(data: ImageSet, metadata: dict, run_or_weights: str) -> None:
    """Refuse a dataset whose labels or images the model cannot take."""
    model = f"{run_or_weights} ({metadata['model']} trained on {metadata['dataset']})"
    if len(data.classes) != metadata["num_classes"]:
        raise CnnlabError(
            f"{data.name} has {len(data.classes)} classes but {model} predicts "
            f"{metadata['num_classes']}; evaluate it on a dataset with the same classes"
        )
    channels = data.image_size[0]
    if channels != metadata["in_channels"]:
        raise CnnlabError(
            f"{data.name} has {channels}-channel images but {model} takes "
            f"{metadata['in_channels']}-channel images"
        )


def format_evaluation(evaluation: Evaluation, classes: list[str]) -> str:
    """Loss and accuracy, a per-class accuracy table, then the confusion matrix."""
    lines = [
        f"loss {evaluation.loss:.4f}  accuracy {evaluation.acc:.4f}  ({evaluation.count:,} images)",
        "",
        "per-class accuracy:",
    ]
    counts = evaluation.confusion.sum(1).tolist()
    width = max(len(name) for name in classes)
    index_width = len(str(len(classes) - 1))
    for index, (name, acc) in enumerate(zip(classes, evaluation.per_class.tolist(), strict=True)):
        shown = "-" if acc != acc else f"{acc:.4f}"  # NaN: the class has no images
        lines.append(
            f"  {index:>{index_width}}  {name.ljust(width)}  {shown:>6}  ({counts[index]:,} images)"
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    lines += confusion_table(evaluation.confusion, classes)
    return "\n".join(lines)


def confusion_table(confusion: torch.Tensor, classes: list[str]) -> list[str]:
    """The matrix as aligned text rows, labelled by class name, or by index if a name is long."""
    short = max(len(name) for name in classes) <= SHORT_LABEL
    labels = list(classes) if short else [str(index) for index in range(len(classes))]
    rows = confusion.tolist()
    label_width = max(len(label) for label in labels)
    cell = max(label_width, len(str(int(confusion.max()))))

    def line(label: str, cells: list) -> str:
        return f"  {label:>{label_width}}  " + " ".join(f"{value:>{cell}}" for value in cells)

    header = line("", labels)
    body = [line(label, row) for label, row in zip(labels, rows, strict=True)]
    return [header.rstrip(), *body]


# ---- predicting image files -------------------------------------------------------------------


def load_image_for(path: str | Path, metadata: dict, invert: bool = False) -> torch.Tensor:
    """A PNG or JPEG file as uint8 C x H x W the way the model's training images were stored:
    its channels, and its stored size (bilinear). `invert` gives 255 - value (see the module
    docstring: light-on-dark datasets and dark-on-light photos)."""
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing (no such file)"
        raise DataFormatError(f"{path}: expected a PNG or JPEG image, found {found}")
    _, height, width = metadata["image_size"]
    try:
        array = decode_image(path, metadata["in_channels"], (height, width), None)
    except BadImage as bad:
        raise DataFormatError(bad.message(path)) from None
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return 255 - image if invert else image


@torch.no_grad()
def predict_images(
    run_or_weights: str,
    paths: list[str],
    top_k: int = 5,
    device: str = "auto",
    invert: bool = False,
) -> list[tuple[str, list[tuple[str, float]]]]:
    """For each image file, the `top_k` most probable (class name, probability) pairs, most
    probable first; k larger than the number of classes gives every class."""
    if not paths:
        raise CnnlabError("no image files given: name at least one PNG or JPEG file")
    model, metadata = load_trained(run_or_weights)
    images = torch.stack([load_image_for(path, metadata, invert) for path in paths])
    target = resolve_device(device)
    model = model.to(target).eval()
    logits = model(eval_pipeline(metadata)(images.to(target))).float()
    values, indices = metrics.top_k(logits.softmax(dim=1), top_k)
    classes = metadata["classes"]
    return [
        (str(path), [(classes[i], p) for i, p in zip(rows_i, rows_p, strict=True)])
        for path, rows_i, rows_p in zip(paths, indices.tolist(), values.tolist(), strict=True)
    ]


def format_predictions(predictions: list[tuple[str, list[tuple[str, float]]]]) -> str:
    """Each file on a line of its own, followed by its classes and probabilities."""
    lines = []
    for path, pairs in predictions:
        lines.append(path)
        width = max(len(name) for name, _ in pairs)
        lines += [f"  {name.ljust(width)}  {probability:.4f}" for name, probability in pairs]
    return "\n".join(lines)
