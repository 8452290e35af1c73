"""Commands that dissect models and datasets: summary, zoo, data info."""

from __future__ import annotations

import argparse
import json

from cnnlab.cli.args import add_data_dir, parse_input_size, parse_options, positive_int
from cnnlab.errors import CnnlabError


def add_model_parsers(commands) -> None:
    summary = commands.add_parser(
        "summary",
        help="layer-by-layer shapes, parameters, MACs and receptive fields of a model",
        description="One row per layer: output shape, parameters, multiply-accumulates (MACs), "
        "receptive field and jump; then totals. Runs on the meta device: no weights allocated.",
    )
    summary.add_argument("model", help="a model name (see `cnnlab zoo`)")
    summary.add_argument(
        "--input",
        type=parse_input_size,
        metavar="CxHxW",
        help="input size, e.g. 1x28x28 (default: the model's design input)",
    )
    summary.add_argument("--num-classes", type=int, default=1000, metavar="N")
    summary.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        dest="options",
        help="a model build option, e.g. --set width_multiplier=0.25 (repeatable)",
    )
    summary.add_argument(
        "--fully-conv",
        action="store_true",
        help="replace the FC head by equivalent convolutions (AlexNet, VGG, LeNet) first",
    )
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(handler=run_summary)

    zoo = commands.add_parser(
        "zoo",
        help="every model with parameters, MACs, year and paper",
        description="Every registered model, with parameters and MACs at its default input.",
    )
    zoo.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    zoo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    zoo.set_defaults(handler=run_zoo)


def add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="inspect datasets", description="Inspect datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    info = data_commands.add_parser(
        "info",
        help="counts per class, mean/std per channel, image size, and a grid of samples",
        description="For every split of the dataset (or the one --split names): counts per "
        "class, mean/std per channel, image size; --grid writes a PNG with sample images of "
        "every class of the training split (or of --split).",
    )
    info.add_argument(
        "dataset", help="fashion-mnist, mnist, kmnist, cifar10, cifar100, or a folder"
    )
    info.add_argument(
        "--split",
        help="report this split only: train or test; for a folder: its train/val/test "
        "subfolder (default: every split)",
    )
    add_data_dir(info)
    info.add_argument("--grid", metavar="OUT.png", help="write a PNG grid of samples per class")
    info.add_argument("--per-class", type=positive_int, default=8, metavar="N", help="grid columns")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=run_data_info)


def run_summary(args: argparse.Namespace) -> int:
    import torch

    from cnnlab.analysis import format_summary, summarize, to_fully_convolutional
    from cnnlab.models import create_model

    channels = args.input[0] if args.input else 3
    with torch.device("meta"):
        model = create_model(
            args.model,
            num_classes=args.num_classes,
            in_channels=channels,
            **parse_options(args.options),
        )
    if args.fully_conv:
        model = to_fully_convolutional(model)
    input_size = args.input or model.default_cfg.input_size
    result = summarize(model, input_size)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_summary(result))
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    from cnnlab.analysis.zoo import format_zoo, zoo_entries

    entries = zoo_entries(args.pattern)
    if not entries:
        raise CnnlabError(f"no model matches {args.pattern!r}; `cnnlab zoo` lists them all")
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    else:
        print(format_zoo(entries))
    return 0


def run_data_info(args: argparse.Namespace) -> int:
    from cnnlab.data import dataset_splits, load_dataset
    from cnnlab.data.info import dataset_info, format_splits_info, save_grid, splits_info

    splits = [args.split] if args.split else dataset_splits(args.dataset)
    grid_split = args.split or ("train" if "train" in splits else splits[0])
    infos = {}
    for split in splits:
        data = load_dataset(args.dataset, split, root=args.data_dir, download=not args.no_download)
        infos[split] = dataset_info(data)
        if args.grid and split == grid_split:
            save_grid(data, args.grid, per_class=args.per_class)
            grid_name = data.name
    report = splits_info(args.dataset, infos)
    print(json.dumps(report, indent=2) if args.json else format_splits_info(report))
    if args.grid and not args.json:
        print(f"grid of samples of {grid_name} written to {args.grid}")
    return 0
