"""Commands that take cnnlab models to other tools: export (ONNX, TorchScript, safetensors)."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli.args import positive_int


def add_parsers(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export a trained model to ONNX, TorchScript or safetensors, verified",
        description="Export a run's model (eval mode, the run's input size) and check that the "
        "exported file's logits match PyTorch's on random batches of 1 and N and on N images of "
        "the run's dataset (when on disk): max abs diff at most 1e-4 x max |logit| (safetensors: "
        "exact). Only a verified file is written; otherwise exit 2.",
    )
    export.add_argument("source", metavar="RUN", help="run folder, or its model.safetensors")
    export.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help="onnx, torchscript or safetensors",
    )
    export.add_argument(
        "--out",
        metavar="FILE",
        help="default: RUN/model.onnx, RUN/model.pt or RUN/model-export.safetensors",
    )
    export.add_argument("--opset", type=positive_int, help="ONNX opset (default: torch's)")
    export.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        metavar="N",
        help="the larger batch checked, and how many dataset images (default 4, at least 2)",
    )
    export.add_argument(
        "--data-dir", help="where the run's dataset lives (default: the run's, else $CNNLAB_DATA)"
    )
    export.add_argument("--json", action="store_true", help="print the report as JSON")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cnnlab.interop.export import export_run

    report = export_run(
        args.source,
        args.format,
        out=args.out,
        opset=args.opset,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def format_report(report) -> str:
    """The file written, each checked batch's difference, then the verdict and tolerance."""
    opset = f", opset {report.opset}, dynamic batch dimension" if report.opset else ""
    lines = [f"wrote {report.path} ({report.format}{opset}); logits checked against PyTorch:"]
    width = max(len(check.inputs) for check in report.checks)
    lines += [
        f"  {check.inputs.ljust(width)}  batch {check.batch:>3}  "
        f"max abs diff {check.max_abs_diff:.3g}"
        for check in report.checks
    ]
    lines += [f"  not checked: {reason}" for reason in report.not_checked]
    lines.append(
        f"max abs diff {report.max_abs_diff:.3g} <= tolerance {report.tolerance:.3g} "
        f"({report.relative_tolerance:g} x max |logit| {report.output_scale:.3g})"
    )
    return "\n".join(lines)
