"""The `explain` command: list the topics, or run experiments and print their verdicts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.cli.args import add_data_dir
from cnnlab.errors import CnnlabError


def add_parser(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="run the experiment behind a classic claim about CNNs and print the verdict",
        description="Without a topic: list the topics (as JSON with --json). With topics (names "
        "or numbers, or 'all'): run each experiment, print the explanation, the measured numbers "
        "and the verdict computed from them; --out DIR also writes the figures.",
    )
    explain.add_argument("topics", nargs="*", metavar="TOPIC", help="name, number, or all")
    explain.add_argument("--quick", action="store_true", help="the small version (< 1 min each)")
    explain.add_argument("--seed", type=int, default=0, help="default 0")
    explain.add_argument("--out", metavar="DIR", help="write figures (PNG) into DIR")
    explain.add_argument(
        "--model", help="the zoo model to dissect, for output-size and receptive-field"
    )
    explain.add_argument(
        "--json", action="store_true", help="print JSON (the reports, or the list) instead of text"
    )
    add_data_dir(explain)
    explain.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    from cnnlab.explain import Context, format_report, ordered_topics, run_topic

    topics = ordered_topics()
    if not args.topics:
        _print_list(topics, args.json)
        return 0
    chosen = _choose(args.topics, topics)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise CnnlabError(f"--out {out} is a file; expected a folder for the figures")
    reports = []
    for entry in chosen:
        ctx = Context(
            quick=args.quick,
            seed=args.seed,
            out_dir=out,
            data_dir=args.data_dir,
            download=not args.no_download,
            model=args.model,
            log=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        )
        report = run_topic(entry.name, ctx)
        reports.append(report)
        if not args.json:
            print(format_report(report) + ("\n" if len(chosen) > 1 else ""), flush=True)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0


def _print_list(topics, as_json: bool) -> None:
    if as_json:
        keys = ("name", "number", "title", "claim")
        print(json.dumps([{key: getattr(t, key) for key in keys} for t in topics], indent=2))
        return
    width = max(len(t.name) for t in topics)
    for entry in topics:
        print(f"{entry.number:>2}  {entry.name:<{width}}  {entry.title}")
    print("\nRun one: cnnlab explain TOPIC [--quick] [--out DIR] [--json]")


def _choose(requested: list[str], topics) -> list:
    if requested == ["all"]:
        return topics
    by_key = {t.name: t for t in topics} | {str(t.number): t for t in topics}
    unknown = [name for name in requested if name not in by_key]
    if unknown:
        names = ", ".join(t.name for t in topics)
        raise CnnlabError(
            f"unknown topic {', '.join(unknown)}; expected a number, all, or: {names}"
        )
    return [by_key[name] for name in requested]
