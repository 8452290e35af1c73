"""The explain framework: the catalogue, reports, their text and JSON forms, and the CLI."""

from __future__ import annotations

import json

import pytest

from cnnlab.cli import main
from cnnlab.explain import TOPICS, Context, Finding, format_report, ordered_topics, run_topic
from cnnlab.explain.topic import at_least, format_number, percent, topic


def test_catalogue_has_every_topic_numbered_once():
    numbers = [t.number for t in ordered_topics()]
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 1
    for entry in TOPICS.values():
        assert entry.title and entry.claim and len(entry.explanation) > 80


@pytest.fixture
def fake_topic():
    @topic(99, "fake", "A fake topic", "Two plus two is four.", "We add two and two.")
    def run(ctx):
        total = 2 + 2
        return Finding({"total": total, "curve": list(range(12))}, total == 4, f"2 + 2 = {total}")

    yield run
    del TOPICS["fake"]


def test_report_text_and_json(fake_topic):
    report = run_topic("fake", Context(quick=True, seed=3))
    assert report["holds"] is True and report["numbers"]["total"] == 4
    assert report["seed"] == 3 and report["quick"] is True and report["seconds"] >= 0
    json.dumps(report)
    text = format_report(report)
    assert text.startswith("[99] A fake topic\nClaim: Two plus two is four.")
    assert "  total: 4" in text
    assert "  curve: [0, 1, 2, 3, 4, 5, 6, 7, ... (12 values)]" in text
    assert "Verdict: the claim HOLDS here. 2 + 2 = 4" in text


def test_at_least_says_all_for_a_whole():
    assert at_least(1.0) == "all"
    assert at_least(0.834) == "at least 83%"


def test_percent_to_a_tenth_of_a_point():
    assert percent(0.8734) == "87.3%"
    assert percent(1.0) == "100.0%"


def test_numbers_are_printed_readably():
    assert format_number(1234567) == "1,234,567"
    assert format_number(0.123456) == "0.1235"
    assert format_number(3.2e-9) == "3.200e-09"
    assert format_number(True) == "True"


def test_figure_paths_only_with_an_output_folder(tmp_path):
    assert Context().figure_path("x") is None
    ctx = Context(out_dir=tmp_path / "figs", topic="pooling")
    assert ctx.figure_path("shift") == tmp_path / "figs" / "pooling-shift.png"
    assert (tmp_path / "figs").is_dir()


def test_cli_lists_runs_and_refuses(capsys, tmp_path):
    assert main(["explain"]) == 0
    listing = capsys.readouterr().out
    assert " 1  activations" in listing and "Why activations" in listing
    assert main(["explain", "1", "--quick", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["topic"] == "activations" and report["figures"]
    assert (tmp_path / "activations-fits.png").stat().st_size > 1000
    assert main(["explain", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab explain: error: unknown topic nope; expected a number, all")
    (tmp_path / "file").write_text("x")
    assert main(["explain", "1", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


def test_cli_lists_topics_as_json(capsys):
    assert main(["explain", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [entry["number"] for entry in listing] == list(range(1, 19))
    assert [entry["name"] for entry in listing] == [t.name for t in ordered_topics()]
    for entry in listing:
        assert set(entry) == {"name", "number", "title", "claim"}
        assert entry == {key: getattr(TOPICS[entry["name"]], key) for key in entry}
    assert listing[0]["name"] == "activations" and listing[-1]["name"] == "multi-label"


def test_cli_json_with_topics_prints_their_reports(capsys):
    assert main(["explain", "output-size", "9", "--quick", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [report["topic"] for report in reports] == ["output-size", "dropout"]
    assert all(report["holds"] is True for report in reports)
