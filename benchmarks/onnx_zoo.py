"""Export every zoo model to ONNX and check it with onnxruntime: the table in BENCHMARKS.md.

Each model: random init (seed 0), 10 classes, 3 channels, its minimum input size; exported by
`cnnlab.interop.export.export_model` (torch.onnx's exporter, dynamic batch), then run by
onnxruntime on random batches of 1 and 2 beside PyTorch. Prints one Markdown row per model:
parameters, input, the largest logit difference, the largest logit, their ratio (the check
passes at <= 1e-4 of the largest logit), pass/fail and the seconds taken (building, export,
writing and both runs). Exits 1 if any model fails. Takes about five minutes on two cores.

    python benchmarks/onnx_zoo.py [MODEL ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import describe

from cnnlab.errors import CnnlabError
from cnnlab.interop.export import export_model
from cnnlab.models import create_model, list_models


def export_row(name: str, folder: Path) -> tuple[str, bool]:
    torch.manual_seed(0)
    start = time.perf_counter()
    model = create_model(name, num_classes=10)
    height, width = model.default_cfg.min_input_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    described = f"| {name} | {params:.1f}M | {height}x{width} |"
    path = folder / f"{name}.onnx"
    try:
        report = export_model(model, (3, height, width), "onnx", path, batch_size=2)
    except CnnlabError as error:
        return f"{described} failed: {error} | | | NO | |", False
    seconds = time.perf_counter() - start
    path.unlink(missing_ok=True)
    ratio = report.max_abs_diff / report.output_scale if report.output_scale else 0.0
    passed = "yes" if report.passed else "NO"
    row = (
        f"{described} {report.max_abs_diff:.2g} | {report.output_scale:.2g} | {ratio:.1e} | "
        f"{passed} | {seconds:.1f} |"
    )
    return row, report.passed


def main(names: list[str]) -> int:
    print(describe())
    print("| model | params | input | max abs diff | max abs logit | ratio | passed | seconds |")
    print("|---|---:|---|---:|---:|---:|---|---:|")
    failed, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in names or list_models():
            row, passed = export_row(name, Path(folder))
            print(row, flush=True)
            if not passed:
                failed.append(name)
    print(
        f"{len(names or list_models()) - len(failed)} passed, {len(failed)} failed "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
