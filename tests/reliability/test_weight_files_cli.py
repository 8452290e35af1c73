"""The command line refuses bad weight and checkpoint files: real `cnnlab` processes (eval,
predict, train --resume, train --init-from; each forked from one that imported cnnlab) given a
pickle payload or a damaged, non-finite or wrong-architecture file exit with code 2 and one
error line naming the file, with no traceback; the payload never runs, the bad file is left as
it was, and no run folder is made or checkpoint added.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from weight_file_inputs import (
    CORRUPT,
    lenet,
    other_weights,
    torch_zip_payload,
    with_value,
)

from cnnlab.runs.checkpoint import save_checkpoint
from training_processes import run_cnnlab_many

# (command, what the bad file is); every command gets the torch.save payload, and the damaged
# files are spread over the commands so that each command meets several of them.
CLI_CASES = [
    *[(command, "payload") for command in ("eval", "predict", "resume", "init-from")],
    ("eval", "truncated"),
    ("eval", "nan"),
    ("predict", "empty"),
    ("predict", "wrong-architecture"),
    ("resume", "random"),
    ("resume", "nan"),
    ("resume", "wrong-architecture"),
    ("init-from", "random"),
    ("init-from", "nan"),
]
EXPECTED = {
    "payload": "cnnlab never unpickles a file",
    "truncated": "file not fully covered",
    "empty": "is empty",
    "random": "it is truncated or another format",
    "nan": "holds NaN or infinite values",
    "wrong-architecture": "fc.weight is (5, 84) in the file but (10, 84) in the model",
}


def bad_file(workspace: Path, folder: Path, command: str, kind: str) -> Path:
    """The bad file for `command` (a checkpoint for resume, weights otherwise) in `folder`."""
    run = workspace / "run"
    good = run / ("checkpoints/last.safetensors" if command == "resume" else "model.safetensors")
    path = folder / good.name
    if kind == "payload":
        torch_zip_payload(path, folder / "created-by-payload")
    elif kind == "nan":
        key = "model.hidden.0.weight" if command == "resume" else "hidden.0.weight"
        with_value(good, path, key, float("nan"))
    elif kind == "wrong-architecture" and command == "resume":
        save_checkpoint(path, lenet(5), state={"epoch": 1})
    elif kind == "wrong-architecture":
        other_weights(workspace, path, lenet(5))
    else:
        damage = {"truncated": "truncated-by-1-byte", "empty": "empty", "random": "random-4KiB"}
        path.write_bytes(CORRUPT[damage[kind]](good.read_bytes()))
    return path


def cli_command(workspace: Path, folder: Path, command: str, path: Path) -> list[str]:
    data = str(workspace / "data")
    if command == "eval":
        return ["eval", str(path), "--data-dir", data, "--device", "cpu"]
    if command == "predict":
        return ["predict", str(path), str(workspace / "image.png"), "--device", "cpu"]
    if command == "resume":
        return ["train", "--resume", str(folder)]
    return [
        *("train", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir", data),
        *("--epochs", "1", "--device", "cpu", "--quiet", "--out", str(folder / "new-run")),
        *("--init-from", str(path)),
    ]


@pytest.fixture(scope="module")
def cli_outcomes(workspace) -> dict:
    """Every CLI case run as a `cnnlab` process of its own, two at a time."""
    cases = {}
    for command, kind in CLI_CASES:
        folder = workspace / "cli" / f"{command}-{kind}"
        if command == "resume":  # a copy of the run whose only checkpoint is the bad one
            shutil.copytree(workspace / "run", folder)
            shutil.rmtree(folder / "checkpoints")
            (folder / "checkpoints").mkdir()
            path = bad_file(workspace, folder / "checkpoints", command, kind)
        else:
            folder.mkdir(parents=True)
            path = bad_file(workspace, folder, command, kind)
        cases[(command, kind)] = (folder, path, path.read_bytes())

    outcomes = run_cnnlab_many(
        [cli_command(workspace, cases[case][0], case[0], cases[case][1]) for case in cases],
        workspace / "cli",
        cwds=[folder for folder, _, _ in cases.values()],
    )
    results = dict(zip(cases, outcomes, strict=True))
    return {case: (*cases[case], results[case]) for case in cases}


@pytest.mark.parametrize(("command", "kind"), CLI_CASES, ids=[f"{c}-{k}" for c, k in CLI_CASES])
def test_the_command_line_refuses_bad_files(cli_outcomes, command, kind):
    folder, path, content, result = cli_outcomes[(command, kind)]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result.stderr
    # a resume may warn about the checkpoint it could not use; nothing else is printed
    others = [line for line in lines if line not in errors]
    assert all("warning" in line.lower() for line in others) if command == "resume" else not others
    name = "train" if command in ("resume", "init-from") else command
    assert errors[0].startswith(f"cnnlab {name}: error: ")
    assert str(path) in errors[0] and EXPECTED[kind] in errors[0], errors[0]
    assert not (folder / "created-by-payload").exists()
    assert path.read_bytes() == content  # nothing rewrote the bad file
    if command == "resume":
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    if command == "init-from":
        assert not (folder / "new-run").exists()  # refused before the run folder was made
