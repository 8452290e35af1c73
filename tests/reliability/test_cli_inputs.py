"""Impossible `cnnlab train` arguments are refused before any work, with one clear line.

Every case is a real `cnnlab train` process of its own. Its data folder is a trap: the dataset
files are there but hold text, so a run that loaded any data would fail naming one of them
instead of the input at fault. Each bad input must exit with 2 and exactly one line on stderr
naming the problem, no traceback, and no run folder (nor any new file in a --resume folder).
The processes run two at a time, forked from one that imported cnnlab (run_cnnlab_many): each
would otherwise spend most of its second importing torch.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from training_processes import run_cnnlab, run_cnnlab_many

TRAP_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# (name, arguments, what the one line on stderr must say); {tmp} is a folder for this test
# module, {run} a finished-looking run folder holding no checkpoint, {plain} a folder that is
# no run, {file} a file
BAD_INPUTS = [
    ("zero epochs", ["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    ("negative epochs", ["--epochs", "-3"], "--epochs must be a positive integer, got -3"),
    ("epochs not a number", ["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    ("zero batch size", ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ("zero input size", ["--resize", "0"], "--resize must be a positive integer, got 0"),
    ("unknown model", ["--model", "lenet5x"], "unknown model 'lenet5x'; close matches: lenet"),
    (
        "input below the model's minimum",
        ["--model", "alexnet", "--resize", "32"],
        "--resize 32 is below alexnet's minimum input size: it needs at least 63x63 pixels",
    ),
    (
        "input below the minimum an option sets",
        ["--model", "inception_v3", "--set", "aux_logits=True", "--resize", "96"],
        "--resize 96 is below inception_v3's minimum input size: it needs at least 299x299",
    ),
    ("unknown model option", ["--set", "depth=3"], "model 'lenet_bn' has no option 'depth'"),
    (
        "model option of the wrong type",
        ["--model", "googlenet", "--set", "aux_logits=yes"],
        "--set aux_logits='yes': googlenet's aux_logits takes true or false",
    ),
    ("negative learning rate", ["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    ("NaN learning rate", ["--lr", "nan"], "--lr must be a positive number, got nan"),
    ("momentum of 1.5", ["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
    (
        "infinite weight decay",
        ["--weight-decay", "inf"],
        "--weight-decay must be finite and >= 0.0, got inf",
    ),
    ("validation split of 1.5", ["--val-split", "1.5"], "--val-split must be in [0.0, 0.9]"),
    ("negative validation split", ["--val-split", "-0.1"], "--val-split must be in [0.0, 0.9]"),
    (
        "unknown augmentation",
        ["--augment", "crop,spin"],
        "unknown augmentation(s) spin in 'crop,spin'; known: crop",
    ),
    ("unknown optimizer", ["--optimizer", "sgdx"], "--optimizer must be one of sgd, momentum"),
    ("unknown precision", ["--precision", "fp8"], "--precision must be one of fp32, bf16"),
    ("unknown non-finite policy", ["--nonfinite", "ignore"], "--nonfinite must be one of stop"),
    ("negative seed", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("zero threads", ["--threads", "0"], "--threads must be a positive integer, got 0"),
    (
        "negative patience",
        ["--early-stopping", "-1", "--val-split", "0.1"],
        "--early-stopping must be an integer >= 0, got -1",
    ),
    ("warmup past the end", ["--warmup-epochs", "20"], "--warmup-epochs must be in [0.0, 10]"),
    ("unknown dataset", ["--dataset", "nonesuch"], "unknown --dataset 'nonesuch': expected one"),
    ("missing --init-from", ["--init-from", "{tmp}/none"], "--init-from {tmp}/none: no weights"),
    ("--freeze alone", ["--freeze", "features"], "--freeze features needs trained weights"),
    ("--out is a file", ["--out", "{file}"], "--out {file} is a file"),
    ("--out is not empty", ["--out", "{plain}"], "run folder {plain} already exists and is not"),
    ("--resume a folder that is no run", ["--resume", "{plain}"], "{plain} is not a cnnlab run"),
    ("--resume a missing folder", ["--resume", "{tmp}/none"], "{tmp}/none is not a cnnlab run"),
    ("--resume a run without checkpoint", ["--resume", "{run}"], "{run} has no checkpoint to"),
    (
        "--resume with settings",
        ["--resume", "{run}", "--epochs", "3"],
        "--resume continues a run with its own settings; drop epochs",
    ),
    (
        "a config value of the wrong type",
        ["--config", "{tmp}/wrong_type.toml"],
        "--epochs must be a whole number, got 'ten'",
    ),
    ("an unknown flag", ["--epocs", "3"], "error: unrecognized arguments: --epocs 3"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    trap = tmp / "data" / "fashion-mnist"
    trap.mkdir(parents=True)
    for name in TRAP_FILES:  # text, not IDX: loading it fails naming the file
        (trap / name).write_text("not data: an input was not checked before loading\n")
    run = tmp / "run"
    run.mkdir()
    (run / "config.toml").write_text('model = "lenet"\nepochs = 1\n')
    plain = tmp / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("a folder, but no run\n")
    (tmp / "file").write_text("a file\n")
    (tmp / "wrong_type.toml").write_text('epochs = "ten"\n')
    return {"tmp": tmp, "data": tmp / "data", "run": run, "plain": plain, "file": tmp / "file"}


def train_argv(args: list[str], out: Path, places: dict) -> list[str]:
    argv = ["train", *(a.format(**places) for a in args)]
    if "--resume" not in argv:
        argv += ["--data-dir", str(places["data"]), "--device", "cpu", "--quiet"]
        if "--out" not in argv:
            argv += ["--out", str(out)]
    return argv


def listing(places: dict) -> list[str]:
    return sorted(str(p.relative_to(places["tmp"])) for p in places["tmp"].rglob("*"))


@pytest.fixture(scope="module")
def refusals(places) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every bad input's process, two at a time; the files under tmp before they ran."""
    before = listing(places)
    outs = {name: places["tmp"] / f"out-{index}" for index, (name, _, _) in enumerate(BAD_INPUTS)}
    scratch = Path(tempfile.mkdtemp(prefix="cnnlab-inputs-"))  # outside tmp: it is watched
    try:
        processes = run_cnnlab_many(
            [train_argv(args, outs[name], places) for name, args, _ in BAD_INPUTS], scratch
        )
    finally:
        shutil.rmtree(scratch)
    results = {
        name: (process, outs[name])
        for (name, _, _), process in zip(BAD_INPUTS, processes, strict=True)
    }
    assert listing(places) == before  # nothing made or changed: no run folder, no --resume file
    return results


@pytest.mark.parametrize(("name", "args", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_any_work(refusals, places, name, args, expected):
    result, out = refusals[name]
    expected = expected.format(**places)
    assert result.returncode == 2, result.stderr
    # argparse leaves unrecognized arguments to the top parser ("cnnlab: error: ...")
    assert result.stderr.startswith(("cnnlab train: error: ", "cnnlab: error: ")), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert expected in result.stderr
    assert "not data" not in result.stderr and "IDX" not in result.stderr  # no data was read
    assert not out.exists()


def test_the_trap_catches_a_run_that_loads_data(places, tmp_path):
    """The control: good settings do load the trap's files, and fail naming one of them."""
    result = run_cnnlab(*train_argv(["--epochs", "1"], tmp_path / "run", places), timeout=120)
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz: not an IDX file" in result.stderr
    assert not (tmp_path / "run").exists()
