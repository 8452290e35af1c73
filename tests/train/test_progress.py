"""The epoch progress bar: redrawn in place on a terminal, plain lines at long intervals in a
log (a pipe, a file, CI), and nothing off a terminal for a short training run."""

from __future__ import annotations

import io

from cnnlab.cli import main
from cnnlab.train import progress
from cnnlab.train.progress import EpochBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_bar(stream, clock, seconds_per_step: float, steps: int = 100) -> str:
    bar = EpochBar(1, 2, steps, stream=stream)
    for step in range(steps):
        clock.now += seconds_per_step
        if bar.due():
            bar.draw(step + 1, 0.5, 0.8, 0.1, 1000.0)
    bar.close()
    return stream.getvalue()


def test_a_terminal_gets_a_bar_redrawn_in_place(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    shown = run_bar(Terminal(), clock, seconds_per_step=0.1)
    assert shown.count("\r") > 10 and "\n" not in shown and shown.endswith("\r\033[K")


def test_a_log_gets_no_redraws_only_a_line_every_30_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    assert run_bar(io.StringIO(), clock, seconds_per_step=0.1) == ""  # a 10 s epoch: nothing
    logged = run_bar(io.StringIO(), clock, seconds_per_step=1.0)  # a 100 s epoch
    lines = logged.splitlines()
    assert "\r" not in logged and "\033" not in logged and len(lines) == 3
    assert lines[0] == "epoch 1/2 step 30/100 loss 0.5000 acc 0.8000 lr 0.1 1,000 img/s"


def test_training_into_a_log_writes_no_carriage_returns(shared_data, tmp_path, capsys):
    argv = ["train", "--model", "lenet", "--data-dir", str(shared_data), "--epochs", "2"]
    assert main([*argv, "--batch-size", "8", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr()
    assert "\r" not in printed.err + printed.out
    assert "epoch 1/2 " in printed.out and "epoch 2/2 " in printed.out
