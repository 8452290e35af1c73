"""Wall-clock time since the process started, the clock time-to-accuracy is measured on.

A user waits from the moment they press enter: Python's start-up, importing torch and loading
the data all count. On Linux the kernel records when the process started (/proc/self/stat,
field 22, in clock ticks since boot); elsewhere the clock starts when cnnlab is imported.
"""

from __future__ import annotations

import os
import time

_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """The process's start as a Unix timestamp (seconds)."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may contain spaces
        with open("/proc/uptime") as uptime:
            seconds_since_boot = float(uptime.read().split()[0])
        started_ticks = int(fields[19])  # field 22; fields[0] is field 3
        boot = time.time() - seconds_since_boot
        return boot + started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


def seconds_since_start() -> float:
    return time.time() - process_start_time()
