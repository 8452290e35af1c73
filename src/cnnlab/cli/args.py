"""Argument types and options shared by the commands."""

from __future__ import annotations

import argparse
import ast
from typing import NoReturn

from cnnlab.errors import CnnlabError


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit code 2, like
    cnnlab's own errors: the flag and the problem, and where the usage is, not all of it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where datasets live (default: $CNNLAB_DATA, else ~/.cache/cnnlab/data)",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading missing files"
    )


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_input_size(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected CxHxW with three positive integers, e.g. 3x224x224; got {text!r}"
        )
    return tuple(int(p) for p in parts)


def parse_options(pairs: list[str]) -> dict[str, object]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CnnlabError(f"--set expects OPTION=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options
