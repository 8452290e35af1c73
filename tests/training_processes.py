"""Real `cnnlab` processes for the reliability and distributed tests: run to their end
(`run_cnnlab`), or started in the background with a terminal for stderr, watched through their
progress bar, signalled, and compared by the exact bytes of their tensors."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import torch
from safetensors import safe_open

CNNLAB = [sys.executable, "-m", "cnnlab"]
TRAIN = [*CNNLAB, "train"]
# one math thread, as config.toml records it: a resume and a rerun do the same arithmetic
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMING_KEYS = ("seconds", "images_per_s")
TRAIN_IMAGES = 240  # 192 after the validation split: 192 steps per epoch at batch size 1
STEPS = 192

# `cnnlab train` whose final checkpoint write gets a second Ctrl-C and a SIGTERM of its own: sent
# once the checkpoint's bytes are in the temp file, before the rename, by the process itself.
SIGNALLED_WHILE_SAVING = """
import os, signal, sys
from cnnlab.cli import main
from cnnlab.runs import tensorfile
from cnnlab.train.trainer import Trainer

write, interrupt, stopping = tensorfile.save_file, Trainer.interrupt, []

def interrupting(self, *args):
    stopping.append(True)
    return interrupt(self, *args)

def save_file(tensors, path, metadata=None):
    write(tensors, path, metadata=metadata)
    if stopping:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)

tensorfile.save_file, Trainer.interrupt = save_file, interrupting
sys.exit(main(["train", *sys.argv[1:]]))
"""
SIGNALLED_WHILE_SAVING_TRAIN = [sys.executable, "-c", SIGNALLED_WHILE_SAVING]


def write_data(root: Path) -> Path:
    """The fake Fashion-MNIST of tests/conftest.py with TRAIN_IMAGES training images: epochs
    long enough (about half a second) that a signal sent on seeing the bar lands inside one."""
    spec = importlib.util.spec_from_file_location(
        "reliability_fake_data", Path(__file__).parent / "conftest.py"
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.write_fake_fashion_mnist(root, train=TRAIN_IMAGES, test=20)


def parity_flags(data: Path, run: Path) -> list[str]:
    """A deterministic CPU run whose resume has state to bring back: random crops and flips,
    momentum, a cosine schedule, gradient clipping, a validation split and its best epoch.
    Two epochs of STEPS steps; no --quiet, so the progress bar shows where training is."""
    return [
        *("--model", "lenet", "--epochs", "2", "--batch-size", "1", "--lr", "0.01"),
        *("--optimizer", "momentum", "--schedule", "cosine", "--clip-grad-norm", "1.0"),
        *("--augment", "crop,flip", "--val-split", "0.2", "--seed", "3", "--deterministic"),
        *("--device", "cpu", "--threads", "1", "--data-dir", str(data), "--out", str(run)),
    ]


def run_cnnlab(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    cwd: Path | None = None,
    command: list[str] = CNNLAB,
) -> subprocess.CompletedProcess:
    """`cnnlab ARGS` (or `command` ARGS) run to its end, with one math thread (ENV) unless `env`
    says otherwise; its stdout and stderr captured as text."""
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV if env is None else env,
        cwd=cwd,
    )


# Runs many `cnnlab` commands as real processes that share one interpreter start: the launcher
# imports cnnlab (and torch, most of a short command's second) once, then forks a child per
# command, its stdout and stderr redirected to files, at most `parallel` at a time. Each child
# is a process of its own, with its own exit code, output and files, as `python -m cnnlab` is;
# the launcher runs no torch computation, so forking it is safe.
FORKING_LAUNCHER = """
import json, os, signal, sys, traceback
from cnnlab.cli import main

jobs, parallel = json.load(sys.stdin), int(sys.argv[1])
codes, running = {}, {}

def run(job):
    signal.alarm(job["timeout"])  # a hung command dies (SIGALRM) instead of hanging the test
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(job["cwd"])
    sys.argv = ["cnnlab", *job["argv"]]
    try:
        code = main(job["argv"])
    except SystemExit as exit:
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

def reap():
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

for index, job in enumerate(jobs):
    while len(running) >= parallel:
        reap()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        run(job)
    running[pid] = index
while running:
    reap()
print(json.dumps([codes[index] for index in range(len(jobs))]))
"""


def run_cnnlab_many(
    commands: list[list[str]],
    scratch: Path,
    cwds: list[Path] | None = None,
    parallel: int = 2,
    timeout: int = 120,
) -> list[subprocess.CompletedProcess]:
    """Each `cnnlab ARGS` in `commands` run to its end as a process of its own (see
    FORKING_LAUNCHER), with one math thread (ENV); outputs go through files in `scratch`. A
    command still running after `timeout` seconds is killed (its exit code: -14, SIGALRM)."""
    jobs = [
        {
            "argv": argv,
            "out": str(scratch / f"{index}.out"),
            "err": str(scratch / f"{index}.err"),
            "cwd": str(cwds[index] if cwds else Path.cwd()),
            "timeout": timeout,
        }
        for index, argv in enumerate(commands)
    ]
    with subprocess.Popen(
        [sys.executable, "-c", FORKING_LAUNCHER, str(parallel)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,  # its own process group: the children go with it
    ) as launcher:
        try:
            stdout, stderr = launcher.communicate(json.dumps(jobs), timeout * len(jobs) + 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, stderr
    codes = json.loads(stdout.splitlines()[-1])
    return [
        subprocess.CompletedProcess(
            ["cnnlab", *job["argv"]],
            code,
            Path(job["out"]).read_text(errors="replace"),
            Path(job["err"]).read_text(errors="replace"),
        )
        for job, code in zip(jobs, codes, strict=True)
    ]


class TrainProcess:
    """`cnnlab train ARGS` (or another command) in the background, its stdout and stderr read
    as they come. Its stderr is a pseudo-terminal, as a user's would be, so that it draws its
    progress bar (off a terminal it prints a line per epoch only)."""

    def __init__(self, args: list[str], command: list[str] = TRAIN, env: dict | None = None):
        terminal, stderr = pty.openpty()
        tty.setraw(stderr)  # bytes as written: no "\n" to "\r\n" translation
        self.process = subprocess.Popen(
            [*command, *args],
            env=ENV if env is None else env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        os.close(stderr)  # the child holds it; reading ends when the child closes it
        self.out, self.err = bytearray(), bytearray()
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read_terminal, args=(terminal, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, into: bytearray) -> None:
        while chunk := stream.read1(65536):
            into.extend(chunk)

    @staticmethod
    def _read_terminal(terminal: int, into: bytearray) -> None:
        try:
            while chunk := os.read(terminal, 65536):
                into.extend(chunk)
        except OSError:  # EIO: every process holding the terminal's other end has exited
            pass
        finally:
            os.close(terminal)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        """Until stderr shows `text` (the progress bar of an epoch, say)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.err:
            if self.process.poll() is not None:
                for reader in self.readers:
                    reader.join(10)
                assert text.encode() in self.err, f"exited before {text!r}: {self.stderr}"
                return
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {self.stderr}"
            time.sleep(0.002)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 120) -> int:
        """The exit code (minus the signal's number when a signal ended the process)."""
        try:
            code = self.process.wait(timeout)
        finally:
            self.process.kill()
        for reader in self.readers:
            reader.join(10)
        return code

    @property
    def stdout(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    @property
    def last_line(self) -> str:
        """stderr's last line as the terminal shows it: the bar's redraws and its
        clear-line escape (written just before the final message) dropped."""
        shown = TERMINAL_ESCAPE.sub("", self.stderr)
        return shown.strip().splitlines()[-1]


TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def train(args: list[str], timeout: float = 120) -> TrainProcess:
    """A finished `cnnlab train ARGS` that exited with 0."""
    process = TrainProcess(args)
    code = process.finish(timeout)
    assert code == 0, process.stderr
    return process


_STRAIGHT: dict[str, Path] = {}


def straight_run(tmp_path_factory) -> tuple[Path, Path]:
    """The data and the folder of the uninterrupted parity run: trained once per test process, for
    test_resume_parity.py and test_signals.py alike."""
    if not _STRAIGHT:
        root = tmp_path_factory.mktemp("parity")
        data, run = write_data(root / "data"), root / "straight"
        train(parity_flags(data, run))
        _STRAIGHT.update(data=data, run=run)
    return _STRAIGHT["data"], _STRAIGHT["run"]


def assert_resumes_like(run: Path, straight: Path) -> None:
    """`cnnlab train --resume RUN` continues from where checkpoints/last says and ends where
    the uninterrupted run did: the same epoch records, evaluation and weight bits."""
    epoch, step = position(run)
    assert not (run / "model.safetensors").exists()
    assert leftovers(run) == []
    resumed = train(["--resume", str(run)])
    assert resumed.stdout.startswith(f"resuming {run} at epoch {epoch + 1}, step {step}\n")
    assert epoch_records(run) == epoch_records(straight)
    assert evaluation(run) == evaluation(straight)
    assert tensor_hashes(run / "model.safetensors") == tensor_hashes(straight / "model.safetensors")


def evaluation(run: Path) -> dict:
    return json.loads((run / "evaluation.json").read_text())


def tensor_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every tensor in a safetensors file: its dtype, shape and raw bytes."""
    hashes = {}
    with safe_open(path, framework="pt") as file:
        for key in file.keys():  # noqa: SIM118 - safe_open is no mapping
            tensor = file.get_tensor(key).contiguous()
            digest = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
            hashes[key] = digest.hexdigest()
    return hashes


def checkpoint_state(path: Path) -> dict:
    """The trainer's state (epoch, next batch, history...) saved in a checkpoint."""
    with safe_open(path, framework="pt") as file:
        return json.loads(file.metadata()["cnnlab.checkpoint"])["state"]


def position(run: Path) -> tuple[int, int]:
    """(epochs done, steps done in the next one) that checkpoints/last holds."""
    state = checkpoint_state(run / "checkpoints" / "last.safetensors")
    return state["epoch"], state["next_batch"]


def epoch_records(run: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ from run to run."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def leftovers(run: Path) -> list[str]:
    """Temp files of interrupted atomic writes anywhere in the run folder."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp"))
