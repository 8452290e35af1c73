"""Export a trained model to ONNX, TorchScript or safetensors, each file checked against the
PyTorch model it came from before it takes its name.

`export_run` (`cnnlab export RUN --format F`) loads a run folder or the model.safetensors of a
training run (runs/trained.py), in eval mode on the CPU, with the run's input shape (its
channels and resized size) and class count. `export_model` does the same for any model in
memory, no run folder needed. Unless `--out` says otherwise, the file goes beside the weights,
RUN/model.onnx, RUN/model.pt or RUN/model-export.safetensors (a weights file W.safetensors gives
W.onnx, W.pt, W-export.safetensors):

- onnx: one file, torch's dynamo exporter at its default opset (20 in torch 2.13) or --opset,
  input "images" with a dynamic batch dimension ("batch"), output "logits": the main head only,
  as the auxiliary heads of GoogLeNet and Inception v3 exist in training mode only;
- torchscript: torch.jit.trace, for torch.jit.load in Python or libtorch in C++ (torch 2.13
  calls TorchScript deprecated, and it still loads);
- safetensors: cnnlab's weights format (runs/weights.py), with the model name and options.

The ONNX and TorchScript files carry the run's description (classes, input size, mean and std)
as JSON under "cnnlab": in the ONNX metadata_props, in the TorchScript extra file cnnlab.json.
export_formats.py writes and loads each format.

Verification. The file is written to a temp name, loaded back (onnxruntime, torch.jit.load,
load_model) and run on seeded N(0, 1) batches of 1 and N (two batch sizes exercise the dynamic
dimension; normalised images are of that scale), and on N images of the run's dataset through
its evaluation pipeline when they are on disk (nothing is downloaded). The largest absolute
difference from PyTorch's logits must be at most 1e-4 x max |PyTorch logit| over those inputs;
safetensors must match exactly (the same weights through the same kernels). Relative, because
fp32 rounding error scales with the activations: untrained zoo models give logits from 1e-13
(GoogLeNet) to 1e10 (Inception v3), where any absolute bound is meaningless or unreachable.
Over the zoo onnxruntime is within 3e-6 of that scale (other summation orders, BatchNorm folded
into convolutions), while one altered weight is far above 1e-4. Only a verified file takes the
output's name; a failed export leaves none behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.interop.export_formats import LOADERS, WRITERS, model_label

FORMATS = ("onnx", "torchscript", "safetensors")
_DEFAULT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": "-export.safetensors"}
RELATIVE_TOLERANCE = 1e-4
EXACT_FORMATS = ("safetensors",)
SEED = 0
RANDOM_INPUTS = "random N(0, 1)"


@dataclass
class Check:
    """One batch run through both the exported file and the PyTorch model."""

    inputs: str
    batch: int
    max_abs_diff: float


@dataclass
class ExportReport:
    """What was written and how close the file's logits came to PyTorch's on each batch."""

    format: str
    path: Path
    checks: list[Check]
    output_scale: float  # max |PyTorch logit| over every checked batch
    relative_tolerance: float
    opset: int | None = None
    not_checked: list[str] = field(default_factory=list)  # inputs left out, with the reason

    @property
    def tolerance(self) -> float:
        return self.relative_tolerance * self.output_scale

    @property
    def max_abs_diff(self) -> float:
        return float(torch.tensor([check.max_abs_diff for check in self.checks]).max())

    @property
    def passed(self) -> bool:
        return all(check.max_abs_diff <= self.tolerance for check in self.checks)  # NaN fails

    def to_dict(self) -> dict:
        size = self.path.stat().st_size if self.path.exists() else None
        keys = ("format", "opset", "passed", "max_abs_diff", "tolerance", "relative_tolerance")
        return {
            "path": str(self.path),
            "bytes": size,
            **{key: getattr(self, key) for key in keys},
            "output_scale": self.output_scale,
            "checks": [vars(check) for check in self.checks],
            "not_checked": self.not_checked,
        }


# ---- a run folder -----------------------------------------------------------------------------


def export_run(
    source: str,
    fmt: str,
    out: str | Path | None = None,
    opset: int | None = None,
    batch_size: int = 4,
    data_dir: str | None = None,
) -> ExportReport:
    """Export the model of a run folder (or of a training run's weights file) and verify it,
    with real images of its dataset when they are on disk (`data_dir`, else the run's)."""
    from cnnlab.runs.trained import eval_pipeline, load_trained

    check_format(fmt, opset)
    model, metadata = load_trained(source)
    pipeline = eval_pipeline(metadata)
    blank = torch.zeros(1, *metadata["image_size"], dtype=torch.uint8)
    input_shape = tuple(pipeline(blank).shape[1:])
    images, not_checked = dataset_images(source, metadata, pipeline, batch_size, data_dir)
    path = Path(out) if out is not None else default_output(source, fmt)
    options = {"opset": opset, "batch_size": batch_size, "images": images}
    report = export_model(model, input_shape, fmt, path, metadata=metadata, **options)
    report.not_checked += not_checked
    return report


def check_format(fmt: str, opset: int | None = None) -> None:
    if fmt not in FORMATS:
        raise CnnlabError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise CnnlabError(f"--opset applies to the onnx format only, not to {fmt}")


def default_output(source: str | Path, fmt: str) -> Path:
    """RUN/model.onnx for a run folder, W.onnx beside a weights file W.safetensors (see the
    module docstring for the other formats)."""
    source = Path(source)
    folder, stem = (source, "model") if source.is_dir() else (source.parent, source.stem)
    return folder / f"{stem}{_DEFAULT_SUFFIXES[fmt]}"


def dataset_images(
    source: str, metadata: dict, pipeline, count: int, data_dir: str | None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`count` images spread over the run's test split (else val, else train), preprocessed as
    in evaluation; or no images and the reason, when the dataset is not on disk or does not
    fit the model."""
    from cnnlab.data import load_dataset

    root = data_dir or _run_data_dir(source)
    name = metadata["dataset"]
    reasons = []
    for split in ("test", "val", "train"):
        try:
            data = load_dataset(name, split, root=root, download=False, progress=False)
        except CnnlabError as error:
            reasons.append(str(error))
            continue
        if data.image_size != tuple(metadata["image_size"]) or len(data) == 0:
            found = f"{len(data)} images of {'x'.join(map(str, data.image_size))}"
            stored = "x".join(map(str, metadata["image_size"]))
            return {}, [f"{data.name} images: {found}, the model was trained on {stored}"]
        picks = torch.linspace(0, len(data) - 1, min(count, len(data))).long()
        return {f"{data.name} images": pipeline(data.images[picks])}, []
    found = reasons[0].split(";")[0]  # what is missing, not the lengthy advice that follows
    return {}, [f"{name} images: dataset not on disk, give --data-dir ({found})"]


def _run_data_dir(source: str) -> str | None:
    """The data folder a run folder's config.toml names, if any."""
    from cnnlab.runs.config import load_toml

    config = Path(source) / "config.toml"
    return load_toml(config).get("data_dir") if config.is_file() else None


# ---- any model --------------------------------------------------------------------------------


def export_model(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    fmt: str,
    path: str | Path,
    *,
    metadata: dict | None = None,
    opset: int | None = None,
    batch_size: int = 4,
    images: dict[str, torch.Tensor] | None = None,
) -> ExportReport:
    """Export `model` (put in eval mode on the CPU) for C x H x W inputs to `path`, verify the
    file on random batches of 1 and `batch_size` and on the preprocessed `images` (named
    batches), and give it its name only if it passes; raises CnnlabError otherwise.

    `metadata` goes into the file (safetensors needs the model's name, num_classes and
    in_channels, and its build options when they differ from the defaults: without metadata
    those of a cnnlab model are used)."""
    from cnnlab.fileio import atomic_path

    check_format(fmt, opset)
    if batch_size < 2:
        raise CnnlabError(
            f"batch size {batch_size}: it must be at least 2, since the export is checked at "
            "two batch sizes (1 and the batch size)"
        )
    model = model.cpu().eval()
    metadata = metadata if metadata is not None else _model_description(model, fmt)
    inputs = verification_inputs(input_shape, batch_size, images or {})
    example = inputs[1][1]  # the random batch of batch_size
    path = Path(path)
    with atomic_path(path) as temp:
        opset = WRITERS[fmt](model, example, temp, metadata, opset)
        report = verify_export(temp, fmt, model, inputs)
        report.path, report.opset = path, opset
        if not report.passed:
            failed = next(c for c in report.checks if not c.max_abs_diff <= report.tolerance)
            raise CnnlabError(
                f"{path} not written: the exported {fmt} model's logits differ from PyTorch's by "
                f"{failed.max_abs_diff:.3g} on {failed.inputs} (batch {failed.batch}), over the "
                f"tolerance {report.tolerance:.3g}"
            )
    return report


def verification_inputs(
    input_shape: tuple[int, int, int], batch_size: int, images: dict[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """(description, batch): seeded random batches of 1 and `batch_size`, then the image
    batches given by name."""
    generator = torch.Generator().manual_seed(SEED)
    noise = [
        (RANDOM_INPUTS, torch.randn(size, *input_shape, generator=generator))
        for size in (1, batch_size)
    ]
    return noise + list(images.items())


def verify_export(
    path: str | Path, fmt: str, model: nn.Module, inputs: list[tuple[str, torch.Tensor]]
) -> ExportReport:
    """Run each described batch through the exported file and through `model`; the report says
    how far apart they are and whether that is within the format's tolerance."""
    run_export = LOADERS[fmt](Path(path))
    checks, scale = [], 0.0
    for name, batch in inputs:
        with torch.no_grad():
            expected = logits_of(model, batch)
        found = run_export(batch)
        if found.shape != expected.shape:
            raise CnnlabError(
                f"{path}: the exported model gives logits of shape {tuple(found.shape)} for "
                f"{name} (batch {len(batch)}), PyTorch {tuple(expected.shape)}"
            )
        difference = (found.float() - expected).abs().max()
        checks.append(Check(name, len(batch), float(difference)))
        scale = max(scale, float(expected.abs().max()))
    relative = 0.0 if fmt in EXACT_FORMATS else RELATIVE_TOLERANCE
    return ExportReport(fmt, Path(path), checks, scale, relative)


def logits_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    output = model(batch)
    if not isinstance(output, torch.Tensor):
        raise CnnlabError(
            f"{model_label(model)} returned {type(output).__name__} in eval mode; export needs a "
            "model that returns one logits tensor"
        )
    return output


def _model_description(model: nn.Module, fmt: str) -> dict:
    """What load_model needs to rebuild a zoo model with its default options."""
    if all(hasattr(model, key) for key in ("name", "num_classes", "in_channels")):
        return {
            "model": model.name,
            "num_classes": model.num_classes,
            "in_channels": model.in_channels,
        }
    if fmt == "safetensors":
        raise CnnlabError(
            f"a {type(model).__name__} is not a cnnlab zoo model: safetensors export needs "
            "metadata with its model name, num_classes and in_channels"
        )
    return {}
