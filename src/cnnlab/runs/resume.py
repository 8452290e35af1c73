"""Finding the checkpoint a run continues from, and making sure it belongs to that run.

`load_resumable` tries the run's checkpoints newest first (`last`, `previous`, `best`), warns on
stderr about each one it cannot use and restores from the first that loads. A checkpoint
written for another model, class list or dataset than the run's config.toml (`run_identity`)
is refused outright, naming both sides, unless the user allows the mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.runs.checkpoint import load_checkpoint


def run_identity(config, data) -> dict:
    """What a checkpoint must share with the run that resumes it: model, classes, data."""
    identity = {
        "model": config.model,
        "model_options": config.model_options,
        "dataset": config.dataset,
        "classes": data.classes,
        "in_channels": data.train.image_size[0],
        "input_size": config.resize,
        "training_images": len(data.train),
    }
    return json.loads(json.dumps(identity))  # as it reads back from a checkpoint


def load_resumable(run, model, optimizer, scheduler, extras: dict, check_state):
    """Restore the model, optimiser, scheduler and `extras` from the newest usable checkpoint
    of `run`; return it and its path. `check_state(path, state)` may refuse a checkpoint: a
    CheckpointError moves on to the next one, any other CnnlabError stops. A clear error if
    none can be loaded."""
    skipped = []
    for path in run.resume_candidates():
        if not path.is_file():
            if path == run.last:
                skipped.append(_warn_skipped(path, f"{path} is missing"))
            continue
        try:
            checkpoint = load_checkpoint(
                path,
                model,
                optimizer,
                scheduler,
                extras,
                check_state=lambda state, path=path: check_state(path, state),
            )
            _check_resumable(path, checkpoint.state)
        except CheckpointError as error:
            skipped.append(_warn_skipped(path, str(error)))
            continue
        if skipped:
            print(f"warning: resuming from {path} instead", file=sys.stderr)
        return checkpoint, path
    raise CheckpointError(
        f"cannot resume {run.path}: none of its checkpoints can be loaded ({'; '.join(skipped)})"
    )


def check_same_run(run, identity: dict, path: Path, state, allow_mismatch: bool, echo) -> None:
    """Refuse (CnnlabError, not CheckpointError: no other checkpoint is tried) a checkpoint
    written for another run than `identity` describes, naming both sides; with
    `allow_mismatch`, warn and go on. Older checkpoints say nothing and pass."""
    saved = state.get("run") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        return
    differences = [
        f"{key} {_shown(saved.get(key))} in the checkpoint but {_shown(value)} in {run.config_file}"
        for key, value in identity.items()
        if saved.get(key) != value
    ]
    if not differences:
        return
    if allow_mismatch:
        echo(f"warning: resuming {path} despite: {'; '.join(differences)}")
        return
    raise CnnlabError(
        f"cannot resume {run.path}: {path} was written for another run: "
        f"{'; '.join(differences)}. Resume the run folder that checkpoint came from, or give "
        f"--allow-mismatch to continue from it anyway (its weights must still fit)"
    )


def _warn_skipped(path: Path, problem: str) -> str:
    print(f"warning: cannot resume from {path.name}: {problem}", file=sys.stderr)
    return problem


def _check_resumable(path, state) -> None:
    """Refuse a checkpoint without the training position (one saved by save_checkpoint alone)."""
    if not isinstance(state, dict):
        state = {}
    missing = [key for key in ("epoch", "next_batch", "history") if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of a training run: its state has no {', '.join(missing)}"
        )


def _shown(value) -> str:
    """A short form of an identity value: lists give their length and first items."""
    if isinstance(value, list):
        items = ", ".join(map(str, value[:4])) + (", ..." if len(value) > 4 else "")
        return f"{len(value)} [{items}]"
    return repr(value)
