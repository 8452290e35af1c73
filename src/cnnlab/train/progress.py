"""A one-line progress bar per epoch, redrawn at most a few times a second.

Each redraw reads the running metrics from the device (one host sync), so the bar decides when
a redraw is due from the clock alone; between redraws the training loop never waits on the
device.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class EpochBar:
    def __init__(
        self,
        epoch: int,
        epochs: int,
        total: int,
        stream: TextIO | None = None,
        interval: float = 0.5,
        enabled: bool = True,
    ):
        self.label = f"epoch {epoch}/{epochs}"
        self.total = total
        self.stream = stream or sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.last_draw = float("-inf")

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.last_draw >= self.interval

    def draw(self, done: int, loss: float, acc: float, lr: float, images_per_s: float) -> None:
        self.last_draw = time.monotonic()
        width = 24
        filled = width * done // max(self.total, 1)
        bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
        self.stream.write(
            f"\r{self.label} [{bar}] {done}/{self.total} loss {loss:.4f} acc {acc:.4f} "
            f"lr {lr:.3g} {images_per_s:,.0f} img/s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last_draw > float("-inf"):
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
