"""The zoo table: every registered model with its parameters and MACs at its default input."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from cnnlab.analysis.summary import summarize
from cnnlab.models import create_model, list_models


@dataclass
class ZooEntry:
    name: str
    params: int
    macs: int
    input_size: list[int]
    min_input_size: list[int]
    year: int
    paper: str

    def to_dict(self) -> dict:
        return asdict(self)


def zoo_entries(pattern: str | None = None) -> list[ZooEntry]:
    """One entry per registered model (ImageNet configuration: 1000 classes, 3 channels)."""
    entries = []
    for name in list_models(pattern):
        with torch.device("meta"):
            model = create_model(name)
        cfg = model.default_cfg
        summary = summarize(model)
        entries.append(
            ZooEntry(
                name=name,
                params=summary.total_params,
                macs=summary.total_macs,
                input_size=list(cfg.input_size),
                min_input_size=list(cfg.min_input_size),
                year=cfg.year,
                paper=cfg.paper,
            )
        )
    return entries


def format_zoo(entries: list[ZooEntry]) -> str:
    header = ("Model", "Params", "GMACs", "Input", "Year", "Paper")
    rows = [
        (
            e.name,
            f"{e.params:,}",
            f"{e.macs / 1e9:.3f}",
            "x".join(map(str, e.input_size)),
            str(e.year),
            e.paper,
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in (1, 2) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(
        [
            line(header),
            line(["-" * w for w in widths]),
            *map(line, rows),
            "",
            f"{len(entries)} models; parameters and MACs (multiply-accumulates of convolutions and "
            "linear layers, 1 MAC = 2 FLOPs) for 1000 classes at the default input.",
        ]
    )
