"""What an explain topic is, what it returns, and the catalogue behind `cnnlab explain`.

A topic tests one classic claim about CNNs with a small experiment. Its `run(ctx)` measures,
and returns a `Finding`: the measured numbers, whether the claim held *on those numbers*, and a
verdict sentence built from them. Nothing in a verdict is written in advance: change the
experiment and the verdict follows. `ctx.quick` asks for the small version of the experiment
(under a minute on a 2-core CPU; the full one stays under ten).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Finding:
    numbers: dict  # measured values, JSON-serialisable (floats, ints, strings, lists, dicts)
    holds: bool  # did the claim hold on these numbers
    verdict: str  # one or two sentences computed from the numbers
    figures: list[str] = field(default_factory=list)  # PNG files written (with --out)


@dataclass
class Context:
    """How to run a topic: quick or full, the seed, where figures and data live."""

    quick: bool = True
    seed: int = 0
    out_dir: Path | None = None  # figures go here; None: no figures
    data_dir: str | None = None  # datasets (default: $CNNLAB_DATA, else the cache)
    download: bool = True
    model: str | None = None  # a zoo model to dissect, for the topics that take one
    log: Callable[[str], None] = lambda line: None  # progress lines of long experiments
    topic: str = ""  # set by run_topic: names the figure files

    def rng(self, offset: int = 0) -> np.random.Generator:
        return np.random.default_rng(self.seed + offset)

    def manual_seed(self, offset: int = 0) -> torch.Generator:
        """Seed torch's global generator (layer initialisation) and return a generator too."""
        torch.manual_seed(self.seed + offset)
        return torch.Generator().manual_seed(self.seed + offset)

    def figure_path(self, name: str) -> Path | None:
        """Where figure `name` goes (`<out>/<topic>-<name>.png`), or None without --out."""
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / f"{self.topic}-{name}.png"


@dataclass(frozen=True)
class Topic:
    number: int
    name: str
    title: str
    claim: str
    explanation: str
    run: Callable[[Context], Finding]


TOPICS: dict[str, Topic] = {}


def topic(number: int, name: str, title: str, claim: str, explanation: str):
    """Register the decorated `run(ctx) -> Finding` as topic `name`."""

    def register(run: Callable[[Context], Finding]) -> Callable[[Context], Finding]:
        TOPICS[name] = Topic(number, name, title, claim, " ".join(explanation.split()), run)
        return run

    return register


def ordered_topics() -> list[Topic]:
    return sorted(TOPICS.values(), key=lambda t: t.number)


def run_topic(name: str, ctx: Context) -> dict:
    """Run topic `name` and return its report: the topic's text, the finding, the seconds."""
    entry = TOPICS[name]
    ctx.topic = name
    start = time.perf_counter()
    finding = entry.run(ctx)
    return {
        "topic": entry.name,
        "number": entry.number,
        "title": entry.title,
        "claim": entry.claim,
        "explanation": entry.explanation,
        "quick": ctx.quick,
        "seed": ctx.seed,
        "numbers": finding.numbers,
        "holds": bool(finding.holds),
        "verdict": finding.verdict,
        "figures": finding.figures,
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_report(report: dict, width: int = 100) -> str:
    """The report as text: title, claim, explanation, the numbers, the verdict, the figures."""
    lines = [f"[{report['number']}] {report['title']}", f"Claim: {report['claim']}", ""]
    lines += _wrap(report["explanation"], width)
    lines += ["", "Measured:"]
    lines += [f"  {key}: {value}" for key, value in _flatten(report["numbers"])]
    holds = "HOLDS" if report["holds"] else "DOES NOT HOLD"
    lines += ["", *_wrap(f"Verdict: the claim {holds} here. {report['verdict']}", width)]
    lines += [f"Figure: {path}" for path in report["figures"]]
    mode = "quick" if report["quick"] else "full"
    lines.append(f"({mode} run, seed {report['seed']}, {report['seconds']:.1f} s)")
    return "\n".join(lines)


def format_number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e6 else f"{value:.4g}"


def at_least(fraction: float) -> str:
    """A lower bound on a share, for verdicts: "all" when it is 1, else "at least 83%"."""
    return "all" if fraction >= 1 else f"at least {fraction:.0%}"


def percent(fraction: float) -> str:
    """An accuracy or error for verdicts, to a tenth of a point: 0.8734 -> "87.3%"."""
    return f"{100 * fraction:.1f}%"


def _flatten(numbers: dict, prefix: str = ""):
    for key, value in numbers.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(format_number(v) for v in value[:8])
            more = f", ... ({len(value)} values)" if len(value) > 8 else ""
            yield name, f"[{shown}{more}]"
        else:
            yield name, format_number(value)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines
