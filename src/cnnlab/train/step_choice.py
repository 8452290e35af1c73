"""The machine's memory of which training step was fastest, so that it is measured only once.

Which precision and memory format step fastest depends on the machine (CPU model or GPU, the
threads used), the torch version, the model and its options, the input shape and the batch
size, and nothing else a run can change; so a decision is kept in a small JSON file in the
user's cache folder (`cnnlab.data.decode_cache.cache_root`, subfolder `step-choice/`), named by a
hash of exactly those. A file that does not parse, or names a choice that is not among the
candidates now, is ignored (and later overwritten); writing it is atomic and a failure to
write only means measuring again next time.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.decode_cache import cache_root
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes


def machine_name(device: torch.device) -> str:
    """The processor that runs the steps: the GPU's name, else the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class StepChoice:
    path: Path
    facts: dict  # what the decision depends on
    options: list[tuple[str, str]]

    @classmethod
    def for_run(cls, config, model, images: torch.Tensor, device, options) -> StepChoice:
        facts = {
            "machine": machine_name(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__,
            "model": config.model,
            "model_options": config.model_options,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input": list(images.shape),  # batch, channels, height, width
            "compile": config.compile,
            "options": [list(option) for option in options],
        }
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
        path = cache_root() / "step-choice" / f"{config.model}-{digest[:24]}.json"
        return cls(path, facts, [tuple(option) for option in options])

    def read(self) -> tuple[str, str] | None:
        try:
            saved = json.loads(self.path.read_text())
            choice = (saved["precision"], saved["memory_format"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if saved.get("facts") != self.facts or choice not in self.options:
            return None
        return choice

    def write(self, precision: str, memory_format: str, timings: dict) -> None:
        record = {
            "precision": precision,
            "memory_format": memory_format,
            "step_ms": {name: round(seconds * 1e3, 3) for name, seconds in timings.items()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "facts": self.facts,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(record, indent=1).encode())
        except (OSError, CnnlabError):
            pass  # only costs a measurement next time
