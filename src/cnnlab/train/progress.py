"""Progress within an epoch: a bar redrawn in place on a terminal, plain lines in a log.

Each redraw reads the running metrics from the device (one host sync), so the bar decides when
a redraw is due from the clock alone; between redraws the training loop never waits on the
device. Off a terminal (a log file, a pipe to `tee`, CI, nohup) a redraw would leave a
carriage-return line in the log several times a second, so there the bar writes one plain line
every `log_interval` seconds instead: nothing for an epoch shorter than that (the epoch's own
summary line follows it), a sign of life for a long one.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class EpochBar:
    def __init__(
        self,
        epoch: int,
        epochs: int,
        total: int,
        stream: TextIO | None = None,
        interval: float = 0.5,
        enabled: bool = True,
        log_interval: float = 30.0,
    ):
        self.label = f"epoch {epoch}/{epochs}"
        self.total = total
        self.stream = stream or sys.stderr
        self.on_terminal = is_terminal(self.stream)
        self.interval = interval if self.on_terminal else log_interval
        self.enabled = enabled
        # in a log, the first line comes one interval after the epoch starts, not at its start
        self.last_draw = float("-inf") if self.on_terminal else time.monotonic()
        self.drawn = False

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.last_draw >= self.interval

    def draw(self, done: int, loss: float, acc: float, lr: float, images_per_s: float) -> None:
        self.last_draw = time.monotonic()
        self.drawn = True
        numbers = (
            f"{done}/{self.total} loss {loss:.4f} acc {acc:.4f} lr {lr:.3g} "
            f"{images_per_s:,.0f} img/s"
        )
        if self.on_terminal:
            width = 24
            filled = width * done // max(self.total, 1)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            self.stream.write(f"\r{self.label} [{bar}] {numbers}")
        else:
            self.stream.write(f"{self.label} step {numbers}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.drawn and self.on_terminal:
            self.stream.write("\r\033[K")
            self.stream.flush()


def epoch_line(record: dict, epochs: int) -> str:
    """The line an epoch ends with: its losses, accuracies, rate and what was clipped."""
    line = (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.4f}"
    )
    if record["val_loss"] is not None:
        line += f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
    line += (
        f"  lr {record['lr']:.3g}  {record['images_per_s']:,.0f} img/s  {record['seconds']:.1f} s"
    )
    if record["clipped_steps"]:
        line += f"  clipped {record['clipped_steps']} steps"
    if record.get("skipped_steps"):
        line += f"  skipped {record['skipped_steps']} non-finite steps"
    return line if math.isfinite(record["train_loss"]) else line + "  (non-finite loss)"
