"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

The handler only raises a flag; the training loop sees it after the current step, writes
checkpoints/last and raises `Interrupted`, whose exit code is 128 + the signal's number (130
for SIGINT, 143 for SIGTERM), as shells report processes stopped by a signal. A signal that
arrives after an epoch's last step stops at that epoch's checkpoint. The first signal decides;
later ones (a second Ctrl-C while the checkpoint is written) are only acknowledged, so nothing
breaks off the write. Outside the epochs (setting up, the final evaluation and report) the
trainer's handler stops the run at once with the same exit codes: no checkpoint is being
written then, every file is written atomically, and the last checkpoint stays whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from cnnlab.errors import CnnlabError


class Interrupted(CnnlabError):
    """Training stopped by a signal after writing a checkpoint; `exit_code` is 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def catch_stop_signals(on_signal):
    """While the block runs, SIGINT and SIGTERM call `on_signal(signum)` instead of stopping the
    process; signals can only be caught in the main thread, elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda signum, frame: on_signal(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def notify(text: str) -> None:
    """Write `text` to stderr from a signal handler: straight to the file descriptor, because
    the handler may run while the main thread is inside a write to sys.stderr, whose buffer
    refuses a reentrant write (RuntimeError)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
