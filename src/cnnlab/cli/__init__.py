"""The `cnnlab` command line: parse, call the library, print.

Commands that dissect models and data live in `dissect.py`, training and what follows it in
`training.py`, those of the NumPy reference engine in `scratch.py`, the experiments in
`explain.py`; this module assembles the parser and turns a `CnnlabError` into one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli import dissect, explain, interop, scratch, training, weights
from cnnlab.cli.args import CommandParser
from cnnlab.errors import CnnlabError
from cnnlab.version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except CnnlabError as error:
        # An interrupted run carries its exit code (130, 143): a stop, not an error.
        label = "" if hasattr(error, "exit_code") else "error: "
        print(f"cnnlab {args.command}: {label}{error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(  # and so every command's parser: one-line usage errors
        prog="cnnlab",
        description="Train, dissect and understand the classic convolutional networks.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    dissect.add_model_parsers(commands)
    training.add_parsers(commands)
    dissect.add_data_parser(commands)
    scratch.add_parsers(commands)
    explain.add_parser(commands)
    interop.add_parsers(commands)
    weights.add_parsers(commands)
    return parser
