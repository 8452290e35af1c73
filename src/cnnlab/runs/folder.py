"""The run folder: everything a training run produces, each file written atomically.

config.toml          the fully resolved configuration (enough to rerun)
metrics.jsonl        one line per epoch
checkpoints/last.safetensors      the newest checkpoint (end of epoch, or where a signal stopped)
checkpoints/previous.safetensors  the one before it, kept as a fallback for resuming
checkpoints/best.safetensors      the best epoch's checkpoint
model.safetensors    final weights, with the model name and build options in the metadata
curves.png           loss and accuracy against epoch, train and validation
confusion.png        confusion matrix of the final evaluation
evaluation.json      final loss, accuracy, per-class accuracy and confusion matrix
summary.txt          what was trained, how, and how well

Checkpoints are replaced atomically (see fileio.py): `last` never disappears, and the file it
held until a write becomes `previous` just before the new one takes its name, so a `last` found
corrupted (a disk or copy gone wrong) has an intact predecessor to resume from. Temp files left
by a killed writer are removed when the run is resumed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_bytes, remove_stale_temps
from cnnlab.runs.config import TrainConfig
from cnnlab.runs.weights import FINAL_WEIGHTS


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def create(config: TrainConfig) -> RunFolder:
        """A new run folder: `config.out`, else runs/<model>-<dataset>-<timestamp>."""
        if config.out:
            path = Path(config.out)
        else:
            dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.dataset).name)
            path = Path("runs") / f"{config.model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if path.exists() and any(path.iterdir()):
            raise CnnlabError(
                f"run folder {path} already exists and is not empty: choose another --out, or "
                f"continue it with --resume {path}"
            )
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CnnlabError(f"cannot create run folder {path}: {error.strerror}") from None
        return RunFolder(path)

    @staticmethod
    def start(config: TrainConfig) -> RunFolder:
        """A new run folder (see `create`) holding the run's config.toml."""
        run = RunFolder.create(config)
        run.write_config(config)
        return run

    @staticmethod
    def existing(path: str | Path) -> RunFolder:
        folder = RunFolder(path)
        if not folder.config_file.is_file():
            raise CnnlabError(f"{path} is not a cnnlab run folder: it has no config.toml")
        return folder

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.safetensors"

    @property
    def previous(self) -> Path:
        return self.path / "checkpoints" / "previous.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.safetensors"

    def resume_candidates(self) -> list[Path]:
        """The checkpoints a resume may continue from, in the order to try them."""
        return [self.last, self.previous, self.best]

    def remove_debris(self) -> list[Path]:
        """Delete the temp files that killed writers left in the run folder; return them."""
        return remove_stale_temps(self.path) + remove_stale_temps(self.path / "checkpoints")

    @property
    def weights(self) -> Path:
        return self.path / FINAL_WEIGHTS

    def write_config(self, config: TrainConfig) -> None:
        atomic_write_bytes(self.config_file, config.to_toml().encode())

    def write_metrics(self, history: list[dict]) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write_bytes(self.path / "metrics.jsonl", lines.encode())

    def write_json(self, name: str, data: dict) -> None:
        atomic_write_bytes(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.path / name, text.encode())
