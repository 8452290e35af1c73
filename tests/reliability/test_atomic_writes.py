"""Atomic writes, proved with real processes and real files.

- every write is temp file beside the target -> fsync -> rename -> fsync of the folder;
- SIGKILL at random moments while a real process saves checkpoints in a loop: `last` and
  `previous` are always whole and loadable, never a partial file under a final name, and the
  temp files the kills leave behind are removed by the next save (or a resume);
- a full disk (ENOSPC while writing, or at fsync as delayed allocation reports it) during a real
  `cnnlab train`: exit code 2, a message naming the checkpoint, the previous checkpoints intact,
  no temp debris, and the run resumes once there is space again;
- `last` never disappears while it is being replaced, watched by polling during real saves.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab.fileio as fileio
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_path, atomic_write_bytes, remove_stale_temps
from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.runs.folder import RunFolder
from cnnlab.train.trainer import Trainer
from training_processes import run_cnnlab

KILLS = 24

# ---- the write protocol, step by step -----------------------------------------------------------


def test_a_write_is_fsynced_renamed_and_its_folder_fsynced(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        return fsync(descriptor)

    def recording_replace(source, target):
        events.append(("replace", str(source), str(target)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "metrics.jsonl"
    atomic_write_bytes(target, b"{}\n")

    (_, temp), (_, source, final), (_, folder) = events
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".metrics.jsonl.")
    assert Path(temp).name.endswith(".tmp") and f".{os.getpid()}." in Path(temp).name
    assert (source, final) == (temp, str(target))
    assert folder == str(tmp_path)
    assert target.read_bytes() == b"{}\n" and sorted(tmp_path.iterdir()) == [target]


def test_keep_previous_rotates_only_after_the_new_content_is_written(tmp_path):
    last, previous = tmp_path / "last.bin", tmp_path / "previous.bin"
    atomic_write_bytes(last, b"one")
    with atomic_path(last, keep_previous=previous) as temp:
        assert not previous.exists()  # nothing moves while the new content is being written
        temp.write_bytes(b"two")
    assert (last.read_bytes(), previous.read_bytes()) == (b"two", b"one")
    with pytest.raises(CnnlabError, match="disk went away"), atomic_path(last, previous) as temp:
        temp.write_bytes(b"thr")
        raise OSError(errno.EIO, "the disk went away")
    assert (last.read_bytes(), previous.read_bytes()) == (b"two", b"one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.bin", "previous.bin"]


def test_keep_previous_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    last, previous = tmp_path / "last.bin", tmp_path / "previous.bin"
    atomic_write_bytes(last, b"one")
    with atomic_path(last, keep_previous=previous) as temp:
        temp.write_bytes(b"two")
    assert (last.read_bytes(), previous.read_bytes()) == (b"two", b"one")
    assert previous.stat().st_ino != last.stat().st_ino


def test_stale_temps_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.safetensors.{dead_pid}.ab_c1234.tmp"
    other_target = tmp_path / f".best.safetensors.{dead_pid}.zz9yy8xx.tmp"
    live = tmp_path / f".last.safetensors.{os.getppid()}.k2j3h4g5.tmp"  # pytest's parent runs
    foreign = tmp_path / ".last.safetensors.notapid.tmp"  # not ours: never touched
    for path in (stale, other_target, live, foreign):
        path.write_bytes(b"partial")
    atomic_write_bytes(tmp_path / "last.safetensors", b"whole")  # cleans its own target only
    assert not stale.exists() and other_target.exists() and live.exists() and foreign.exists()
    assert remove_stale_temps(tmp_path) == [other_target]  # a whole folder (as a resume does)
    assert live.exists() and foreign.exists()


def test_a_temp_file_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", full)
    with pytest.raises(CnnlabError, match=r"could not write .*x\.bin: No space left on device"):
        atomic_write_bytes(tmp_path / "x.bin", b"")


# ---- SIGKILL during checkpoint writes -----------------------------------------------------------

# A process that imports torch once and forks a child per request; each child saves checkpoints
# of one model exactly as the trainer saves `last` (keeping `previous`), in a loop, every weight
# equal to the iteration number so that a file mixing two writes would show.
SAVER = textwrap.dedent(
    """
    import os, sys, traceback
    import torch
    from torch import nn
    from cnnlab.runs.checkpoint import save_checkpoint
    from cnnlab.runs.folder import RunFolder

    torch.set_num_threads(1)
    run = RunFolder(sys.argv[1])
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 512)).sum().backward()
    optimizer.step()

    def save(iteration):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(iteration)
        save_checkpoint(
            run.last, model, optimizer, state={"iteration": iteration},
            keep_previous=run.previous,
        )

    for line in sys.stdin:
        command, first, second = line.split()
        if command == "save":  # fork a child saving iterations first... (second of them, 0: all)
            pid = os.fork()
            if pid == 0:
                try:
                    iteration = int(first)
                    while int(second) == 0 or iteration < int(first) + int(second):
                        save(iteration)
                        iteration += 1
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            print(pid, flush=True)
        elif command == "wait":
            print(os.waitpid(int(first), 0)[1], flush=True)
    """
)


class Saver:
    def __init__(self, run: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(run)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def ask(self, *words) -> None:
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()

    def answer(self) -> int:
        line = self.process.stdout.readline()
        assert line, f"the saver process died (exit code {self.process.wait()})"
        return int(line)

    def start(self, first: int, count: int = 0) -> int:
        self.ask("save", first, count)
        return self.answer()

    def wait(self, pid: int) -> int:
        self.ask("wait", pid, 0)
        return self.answer()

    def answered(self) -> bool:
        return bool(select.select([self.process.stdout], [], [], 0)[0])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture(scope="module")
def saver(tmp_path_factory):
    run = tmp_path_factory.mktemp("saver")
    (run / "checkpoints").mkdir()
    process = Saver(run)
    yield process, RunFolder(run)
    process.close()


def same_model() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))


def saved_iteration(path: Path) -> int:
    """Load a saver checkpoint as a resume would; its iteration, checked against every weight."""
    model = same_model()
    iteration = load_checkpoint(path, model).state["iteration"]
    assert all(bool((p == iteration).all()) for p in model.parameters()), f"{path} is mixed"
    return iteration


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_sigkill_during_checkpoint_writes_leaves_last_and_previous_loadable(saver):
    process, run = saver
    checkpoints = run.path / "checkpoints"
    assert process.wait(process.start(0, count=1)) == 0  # the saver process is ready
    started = time.perf_counter()
    assert process.wait(process.start(1, count=2)) == 0
    seconds_per_save = (time.perf_counter() - started) / 2
    assert (saved_iteration(run.last), saved_iteration(run.previous)) == (2, 1)

    rng = random.Random(8)
    newest, mid_write, between_names, stale_cleaned = 2, 0, 0, 0
    for _ in range(KILLS):
        debris_before = set(temps(checkpoints))
        pid = process.start(newest + 1)
        time_to_kill = rng.uniform(0, 3 * seconds_per_save)
        select.select([], [], [], time_to_kill)
        os.kill(pid, signal.SIGKILL)
        status = process.wait(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

        left = temps(checkpoints)
        mid_write += any(f".{pid}." in p.name for p in left)
        last, previous = saved_iteration(run.last), saved_iteration(run.previous)
        assert last >= newest, "a kill must never take back a finished save"
        assert previous in (last - 1, last)  # `last` equals `previous` between the two renames
        between_names += previous == last
        # a child that finished one save (and began the next) removed the earlier kills' debris
        if last >= newest + 2 and debris_before:
            assert not debris_before & set(left), debris_before & set(left)
            stale_cleaned += 1
        newest = last
        for path in (run.last, run.previous):
            assert not path.name.endswith(".tmp")

    # whatever the kills left, plus a planted temp of a dead writer and one of a live writer
    planted = checkpoints / f".previous.safetensors.{pid}.pl4nted_.tmp"
    planted.write_bytes(b"partial")
    live = checkpoints / f".last.safetensors.{os.getpid()}.l1ve____.tmp"
    live.write_bytes(b"partial")
    final = process.start(newest + 1, count=1)
    assert process.wait(final) == 0
    assert temps(checkpoints) == [live]
    live.unlink()
    assert saved_iteration(run.last) == newest + 1

    print(
        f"\nSIGKILL during checkpoint writes: {KILLS} of {KILLS} kills survived "
        f"({mid_write} landed mid-write, leaving a temp file; {between_names} between keeping "
        f"`previous` and renaming `last`; debris of an earlier kill removed by the next save "
        f"{stale_cleaned} times)"
    )
    assert mid_write >= 1, "no kill landed during a write: the timing needs a look"


def test_last_never_disappears_while_it_is_replaced(saver):
    process, run = saver
    assert process.wait(process.start(998, count=2)) == 0  # both files exist to begin with
    pid = process.start(1000, count=40)
    process.ask("wait", pid, 0)
    polls, seen, missing = 0, set(), []
    while not process.answered():
        polls += 1
        for path in (run.last, run.previous):
            try:
                seen.add(whole_file_iteration(path))
            except FileNotFoundError:
                missing.append(path.name)
    assert process.answer() == 0
    assert missing == [], f"{len(missing)} of {polls} polls found no file"
    assert polls >= 40 and len(seen & set(range(1000, 1040))) >= 2, (polls, sorted(seen))


def whole_file_iteration(path: Path) -> int:
    """Open `path`, check that the file is whole (header, and data up to the last tensor's end),
    and return the iteration recorded in it."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        size = os.fstat(file.fileno()).st_size
    metadata = header.pop("__metadata__")
    end = max(entry["data_offsets"][1] for entry in header.values())
    assert size == 8 + length + end, f"{path} is not whole: {size} bytes"
    return json.loads(metadata["cnnlab.checkpoint"])["state"]["iteration"]


# ---- a full disk during a real `cnnlab train` ---------------------------------------------------

# Test-only: imported at interpreter start-up from PYTHONPATH, it makes the disk of one run
# folder "fill up" when the run writes its third `last` checkpoint: either while the bytes are
# written (the real writer's bytes, half of them, then safetensors' own error for ENOSPC), or at
# the fsync (how delayed allocation reports a full disk).
FULL_DISK = textwrap.dedent(
    """
    import errno, os

    checkpoints = os.path.realpath(os.path.join(os.environ["CNNLAB_TEST_FULL_DISK"], "checkpoints"))
    writes = set()

    def fills_the_disk(path):
        name = os.path.basename(path)
        folder = os.path.realpath(os.path.dirname(path))
        if folder != checkpoints or not name.startswith(".last.safetensors."):
            return False
        writes.add(name)
        return len(writes) >= 3

    if os.environ["CNNLAB_TEST_FULL_DISK_AT"] == "write":
        import safetensors.torch
        from safetensors import SafetensorError

        write = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            if not fills_the_disk(str(filename)):
                return write(tensors, filename, metadata=metadata)
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(filename, "wb") as file:
                file.write(data[: len(data) // 2])
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )

        safetensors.torch.save_file = save_file
    else:
        fsync = os.fsync

        def full_fsync(descriptor):
            if fills_the_disk(os.readlink(f"/proc/self/fd/{descriptor}")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return fsync(descriptor)

        os.fsync = full_fsync
    """
)


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_a_full_disk_stops_training_naming_the_file_and_keeps_the_checkpoints(
    at, fake_data, tmp_path
):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK)
    run = tmp_path / "run"
    paths = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "CNNLAB_TEST_FULL_DISK": str(run),
        "CNNLAB_TEST_FULL_DISK_AT": at,
        "OMP_NUM_THREADS": "1",
    }
    flags = ["--model", "lenet", "--epochs", "3", "--batch-size", "16", "--lr", "0.05"]
    flags += ["--data-dir", str(fake_data), "--out", str(run), "--device", "cpu", "--quiet"]
    flags += ["--memory-format", "contiguous", "--threads", "1"]
    result = run_cnnlab("train", *flags, env=env)
    folder = RunFolder(run)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"cnnlab train: error: could not write {folder.last}: ")
    assert "No space left on device" in message and "Traceback" not in result.stderr
    assert sorted(p.relative_to(run) for p in run.rglob("*.tmp")) == []
    assert not folder.weights.exists()
    assert (saved_epoch(folder.last), saved_epoch(folder.previous)) == (2, 1)

    lines = []
    resumed = Trainer.resume(run, echo=lines.append)  # space again: the run continues
    resumed.fit()
    assert lines[0] == f"resuming {run} at epoch 3, step 0"
    assert [record["epoch"] for record in resumed.history] == [1, 2, 3]


def saved_epoch(path: Path) -> int:
    """Load a training checkpoint of the LeNet run; the epoch it was written after."""
    model = create_model("lenet", num_classes=10, in_channels=1)
    return load_checkpoint(path, model).state["epoch"]


@pytest.fixture(autouse=True)
def _global_torch_flags():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # two threads on two busy cores spin more than they compute
    yield
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call takes seconds
        torch.use_deterministic_algorithms(deterministic)
