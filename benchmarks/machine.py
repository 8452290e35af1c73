"""The line every benchmark prints about the machine it ran on: CPU model, cores, GPU if used,
library versions and threads."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch


def describe(device: torch.device | None = None) -> str:
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = ""
    if device is not None and device.type == "cuda":
        gpu = f", {torch.cuda.get_device_name(device)}"
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), NumPy {np.__version__}, "
        f"Python {platform.python_version()}"
    )
