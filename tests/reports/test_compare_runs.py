"""`cnnlab report` compares real run folders: the text and JSON leaderboard hold the figures the
runs recorded, the HTML page is self-contained, and `cnnlab reproduce d2l --report` puts d2l's
published accuracy beside ours."""

import base64
import json
import re
import shutil

import pytest
from report_runs import make_runs

from cnnlab.analysis.summary import summarize
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.reports.compare import compare_runs, format_leaderboard
from cnnlab.reports.html_report import render_html
from cnnlab.runs.weights import load_model
from cnnlab.studies.reproduce import D2L_PUBLISHED


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    return make_runs(shared_data, tmp_path_factory.mktemp("compare"))


def _evaluation(run):
    return json.loads((run / "evaluation.json").read_text())


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cells(line):
    """The cells of a text table line: columns are two or more spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def test_json_holds_the_recorded_figures(runs, capsys):
    assert main(["report", str(runs["cut"]), str(runs["lenet"]), "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["sorted_by"].startswith("sorted by test accuracy")
    lenet, cut = board["runs"]  # the finished run first, whatever order they were given in
    history = _metrics(runs["lenet"])
    assert lenet["label"] == "lenet" and lenet["model"] == "lenet" and lenet["status"] == "finished"
    assert lenet["test_acc"] == _evaluation(runs["lenet"])["acc"]
    assert lenet["best_val_acc"] == history[0]["val_acc"] and lenet["best_val_epoch"] == 1
    assert lenet["train_seconds"] == pytest.approx(history[0]["seconds"])
    assert lenet["images_per_s"] == pytest.approx(history[0]["images_per_s"])
    model, _ = load_model(runs["lenet"] / "model.safetensors")
    assert lenet["params"] == sum(p.numel() for p in model.parameters())
    assert lenet["macs"] == summarize(model, (1, 28, 28)).total_macs > 0
    assert lenet["input_size"] == [1, 28, 28] and lenet["curves"]["epoch"] == [1]
    # cut short: no evaluation, one epoch of two; its model known from its checkpoint
    assert cut["status"] == "unfinished: 1 of 2 epochs" and cut["test_acc"] is None
    assert cut["model"] == "lenet_bn" and cut["params"] > lenet["params"]
    assert cut["best_val_acc"] == _metrics(runs["cut"])[0]["val_acc"]


def test_text_leaderboard_is_sorted_by_test_accuracy(runs, tmp_path, capsys):
    best = tmp_path / "best"
    shutil.copytree(runs["lenet"], best)
    evaluation = {**_evaluation(best), "acc": 0.99}
    (best / "evaluation.json").write_text(json.dumps(evaluation))
    paths = [runs["cut"], runs["lenet"], runs["lenet_bn"], best]
    assert main(["report", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _cells(lines[0]) == [
        "#", "run", "model", "params", "MACs", "best val", "test acc", "time", "images/s", "status",
    ]  # fmt: skip
    rows = [_cells(line) for line in lines[1:5]]
    assert rows[0][6] == "0.9900" and rows[-1][1] == "cut" and rows[-1][6] == "—"
    accuracies = [float(row[6]) for row in rows[:3]]
    assert accuracies == sorted(accuracies, reverse=True)
    assert {row[1]: row[2] for row in rows} == {
        "best": "lenet", "lenet": "lenet", "lenet_bn": "lenet_bn", "cut": "lenet_bn",
    }  # fmt: skip
    assert rows[-1][-1] == "unfinished: 1 of 2 epochs" and rows[0][-1] == "finished"
    assert rows[-1][3].endswith(" K") and rows[-1][7].endswith(" s")
    assert "sorted by test accuracy, highest first" in "\n".join(lines)


def test_older_runs_show_dashes_for_what_they_did_not_record(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs["lenet"], old)
    records = [
        {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in _metrics(old)
    ]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (old / "model.safetensors").unlink()
    shutil.rmtree(old / "checkpoints")
    board = compare_runs([old])
    run = board.runs[0]
    assert run.train_seconds is None and run.images_per_s is None
    assert run.params is None and run.macs is None and run.test_acc is not None
    row = _cells(format_leaderboard(board).splitlines()[1])
    assert row[3:5] == ["—", "—"] and row[7:9] == ["—", "—"]


def test_runs_with_the_same_folder_name_are_told_apart(runs, tmp_path):
    twin = tmp_path / "lenet"
    shutil.copytree(runs["lenet"], twin)
    labels = {run.label for run in compare_runs([runs["lenet"], twin]).runs}
    assert labels == {str(runs["lenet"]), str(twin)}


def test_html_is_one_self_contained_page(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    paths = [str(runs[name]) for name in ("lenet", "lenet_bn", "cut")]
    assert main(["report", *paths, "--html", str(out)]) == 0
    assert f"HTML report written to {out}" in capsys.readouterr().out
    page = out.read_text()
    assert not re.search(r"https?://|<script|<link|@import", page)
    assert page.count("<tr class=") == 3 and page.count('<tr class="unfinished">') == 1
    sources = re.findall(r'<img alt="([^"]*)" src="([^"]*)"', page)
    alts = [alt for alt, _ in sources]
    assert alts[0] == "learning curves of every run"
    assert sorted(alts[1:]) == ["confusion matrix of lenet", "confusion matrix of lenet_bn"]
    for _, source in sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No final evaluation, so no matrix: cut." in page
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left behind


def test_html_escapes_what_it_shows(runs, tmp_path):
    odd = tmp_path / "<b>&odd"
    shutil.copytree(runs["lenet"], odd)
    page = render_html(compare_runs([odd]), title="a <title>")
    assert "<b>&odd" not in page and "&lt;b&gt;&amp;odd" in page
    assert "<h1>a &lt;title&gt;</h1>" in page


def test_not_a_run_folder_is_one_clear_error(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path, found in (
        (tmp_path / "missing", "no such folder"),
        (tmp_path / "empty", "it has no config.toml"),
    ):
        assert main(["report", str(runs["lenet"]), str(path)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"cnnlab report: error: {path} is not a cnnlab run folder: {found}"
        )
    broken = tmp_path / "broken"
    shutil.copytree(runs["lenet"], broken)
    (broken / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(CnnlabError, match=r"metrics.jsonl line 2 is not JSON"):
        compare_runs([broken])
    shutil.copy(runs["lenet"] / "metrics.jsonl", broken)
    evaluation = {**_evaluation(broken), "confusion": [[1, 2], [3, 4]]}
    (broken / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.raises(CnnlabError, match=r"evaluation.json: expected 'confusion' to be a 10x10"):
        compare_runs([broken])
    out = tmp_path / "nowhere" / "report.html"
    assert main(["report", str(runs["lenet"]), "--html", str(out)]) == 2
    assert f"folder {out.parent} does not exist" in capsys.readouterr().err


def test_reproduce_d2l_writes_the_report_beside_the_runs(shared_data, tmp_path, capsys):
    out = tmp_path / "d2l"
    argv = ["reproduce", "d2l", "--models", "lenet", "--epochs", "1", "--quiet"]
    argv += ["--data-dir", str(shared_data), "--out", str(out), "--device", "cpu", "--report"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"HTML report written to {out / 'report.html'}" in printed
    page = (out / "report.html").read_text()
    assert '<th class="number">d2l acc</th>' in page
    test_acc = _evaluation(out / "lenet")["acc"]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page.split("<tbody>")[1].split("</tbody>")[0])
    assert cells[1:3] == ["lenet", "lenet"]
    assert cells[6:8] == [f"{test_acc:.4f}", f"{D2L_PUBLISHED['lenet']:.4f}"]
    rows = json.loads((out / "reproduction.json").read_text())
    assert rows[0]["run"] == str(out / "lenet")


def test_reproduce_refuses_an_unwritable_report_before_training(tmp_path, capsys):
    out, report = tmp_path / "d2l", tmp_path / "nowhere" / "r.html"
    argv = ["reproduce", "d2l", "--models", "lenet", "--out", str(out), "--report", str(report)]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"cnnlab reproduce: error: cannot write the HTML report to {report}: "
        f"folder {report.parent} does not exist"
    )
    assert not out.exists()
