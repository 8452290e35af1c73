"""`cnnlab import-weights`: pretrained weights from another library's layout into a cnnlab
weights file that `cnnlab eval`, `predict` and `train --init-from` take."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.errors import CnnlabError

LAYOUTS = ("torchvision",)


def add_parsers(commands) -> None:
    parser = commands.add_parser(
        "import-weights",
        help="convert a torchvision state dict (.pth, .safetensors) into a cnnlab weights file",
        description="Rename the tensors of a torchvision checkpoint (e.g. resnet18-f37072fd.pth) "
        "for the cnnlab model of the same architecture and write them, with what cnnlab eval, "
        "predict and train --init-from need, to a .safetensors file. .pth files are loaded "
        "with weights_only=True. Models: alexnet, vgg11/13/16/19 (and _bn), "
        "resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, densenet121/161/169/201, "
        "googlenet and inception_v3 (built with torchvision_compat=True, torchvision's network, "
        "so that the outputs are torchvision's).",
    )
    parser.add_argument("file", metavar="FILE", help="torch.save'd state dict or .safetensors")
    parser.add_argument("--model", required=True, help="the cnnlab model, e.g. resnet18")
    parser.add_argument(
        "--layout", default="torchvision", choices=LAYOUTS, help="default: %(default)s"
    )
    parser.add_argument("--out", required=True, metavar="OUT.safetensors", help="file to write")
    parser.add_argument(
        "--classes", metavar="FILE", help="class names, one per line (default: class indices)"
    )
    parser.add_argument(
        "--accept-differences",
        action="store_true",
        help="googlenet, inception_v3: build cnnlab's default network (the paper's pools), "
        "whose outputs differ from torchvision's, instead of torchvision's, e.g. to fine-tune it",
    )
    parser.set_defaults(handler=run_import_weights)


def run_import_weights(args: argparse.Namespace) -> int:
    from cnnlab.interop.torchvision_import import import_torchvision_weights

    classes = read_class_names(args.classes) if args.classes else None
    converted, metadata = import_torchvision_weights(
        args.file, args.model, args.out, classes, args.accept_differences
    )
    print(
        f"wrote {args.out}: {args.model} ({len(converted.state_dict)} tensors, "
        f"{converted.num_classes} classes) from torchvision's layout in {args.file}"
    )
    if converted.counters_set:
        print(
            f"  {converted.counters_set} BatchNorm num_batches_tracked absent from the file, "
            "set to 0"
        )
    if converted.options.get("torchvision_compat"):
        print("  built as torchvision's network (torchvision_compat=True): torchvision's outputs")
    if converted.difference:
        print(f"  differs from torchvision's network: {converted.difference}")
    size = metadata["input_size"]
    print(
        f"  inputs: {size}x{size} RGB normalised with mean {metadata['mean']} and std "
        f"{metadata['std']}; evaluate with: cnnlab eval {args.out} --dataset IMAGE_FOLDER"
    )
    return 0


def read_class_names(path: str) -> list[str]:
    """One class name per line; blank lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CnnlabError(f"cannot read class names from {path}: {error}") from None
    return [line.strip() for line in lines if line.strip()]
