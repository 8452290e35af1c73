"""Using a trained model: `cnnlab eval` (a dataset split) and `cnnlab predict` (image files).

Both start from a run folder or its `model.safetensors`; the model is loaded and images are
prepared exactly as in training by cnnlab.runs.trained (see its docstring, also for the
inversion caveat of `--invert`).
"""

from __future__ import annotations

import torch

from cnnlab.data import ImageSet, load_dataset
from cnnlab.data.loader import InMemoryLoader
from cnnlab.errors import CnnlabError
from cnnlab.runs.trained import eval_pipeline, load_image_for, load_trained
from cnnlab.train import metrics
from cnnlab.train.evaluate import Evaluation, evaluate
from cnnlab.train.setup import resolve_device

# Class names up to this long label the confusion matrix's rows and columns; longer ones are
# replaced by their indices, which the per-class table above it explains.
SHORT_LABEL = 5


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
