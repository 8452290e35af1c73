"""Shared fixture of the explain tests: run a topic in quick mode and check what every report
must satisfy, so that each test asserts only its topic's own property."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cnnlab.explain import Context, run_topic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_quick(tmp_path: Path) -> Callable[..., dict]:
    """`run_quick(name, **context_options) -> report`: topic `name` run with
    `Context(quick=True, out_dir=tmp_path, **context_options)`. The report must be plain, finite
    JSON, the claim must hold, and the topic must have written at least one figure, every one a
    non-empty PNG in tmp_path (every topic draws one)."""

    def run(name: str, **context_options) -> dict:
        report = run_topic(name, Context(quick=True, out_dir=tmp_path, **context_options))
        json.dumps(report, allow_nan=False)  # plain, finite Python numbers only
        assert report["holds"] is True, report["verdict"]
        assert report["figures"], f"topic {name} drew no figure"
        for figure in report["figures"]:
            path = Path(figure)
            assert path.parent == tmp_path
            assert path.is_file() and path.stat().st_size > len(PNG_SIGNATURE)
            assert path.read_bytes().startswith(PNG_SIGNATURE)
        return report

    return run
