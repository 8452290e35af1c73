"""The package as a user meets it: the console script, `python -m cnnlab`, and a clean lint."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_version_and_help_list_every_subcommand():
    result = run(sys.executable, "-m", "cnnlab", "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cnnlab {cnnlab.__version__}"
    result = run(sys.executable, "-m", "cnnlab", "--help")
    assert result.returncode == 0
    for command in (
        "summary",
        "zoo",
        "train",
        "eval",
        "predict",
        "lr-find",
        "cv",
        "reproduce",
        "data",
    ):
        assert command in result.stdout


def test_console_script_installed():
    script = shutil.which("cnnlab", path=str(Path(sys.executable).parent))
    assert script, "the `cnnlab` console script is not installed beside this Python"
    result = run(script, "summary", "lenet", "--input", "1x28x28", "--num-classes", "10")
    assert result.returncode == 0 and "Total params: 61,706" in result.stdout


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff is not installed (pip install -e .[dev])"
)
def test_ruff_lint_and_format_are_clean():
    lint = run("ruff", "check", "--no-cache", ".")  # a stale cache once hid errors
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--no-cache", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_earlier_import_paths_of_the_readme_still_work():
    from cnnlab.reports.compare import compare_runs, format_leaderboard
    from cnnlab.reports.html_report import write_html_report
    from cnnlab.train.compare import compare_runs as old_compare
    from cnnlab.train.compare import format_leaderboard as old_format
    from cnnlab.train.html_report import write_html_report as old_write

    assert (old_compare, old_format, old_write) == (
        compare_runs,
        format_leaderboard,
        write_html_report,
    )
