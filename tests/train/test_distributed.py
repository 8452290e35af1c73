"""Training under torchrun: two CPU processes (Gloo on 127.0.0.1) train what one process trains
on the same global batch, write the run folder once, stop together on a signal, and their
checkpoint resumes in a single process; plus the pieces (sharded batches, torchrun's
environment, refusals) on their own.

Tolerances, as the largest difference of a final tensor relative to the reference tensor's
largest magnitude (at least 1e-3: conv biases in front of BatchNorm get no gradient and stay
near zero). The ranks' gradients are averaged by an all-reduce instead of summed in one
backward pass, so float32 rounding differs: LeNet agrees to about 5e-7 after 78 steps, checked
at 2e-5. BatchNorm over batches of 8 amplifies rounding (one process alone, its first layer's
weights changed by 1e-7, ends 2e-5 away after 13 steps): LeNet-BN with --sync-bn agrees to
about 3e-5, checked at 5e-4; without --sync-bn the two processes end 1.0 away.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.data.loader import InMemoryLoader
from cnnlab.errors import CnnlabError
from cnnlab.train.distributed import Ranks, launched_ranks, refuse_torchrun, run_job
from training_processes import TrainProcess

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("RANK", None)
ENV.pop("WORLD_SIZE", None)
TOLERANCE = 2e-5  # see the module's docstring
BATCHNORM_TOLERANCE = 5e-4
# lenet (no BatchNorm, no dropout), no augmentation: 103 training images after the validation
# split, so each epoch's last global batch of 4 splits 1 + 2 (the loss weighting at work)
LENET = [
    *("--model", "lenet", "--epochs", "3", "--batch-size", "4", "--lr", "0.05"),
    *("--optimizer", "momentum", "--val-split", "0.2", "--precise-bn", "0"),
    *("--precision", "fp32", "--memory-format", "contiguous", "--device", "cpu"),
    *("--threads", "1", "--seed", "1"),
]


def fake_data(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "distributed_fake_data", Path(__file__).parents[1] / "conftest.py"
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.write_fake_fashion_mnist(root, train=133, test=37)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*launcher: str) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc-per-node", "2"),
        *("--master-addr", "127.0.0.1", "--master-port", str(free_port())),
        *("-m", "cnnlab", "train"),
    ]


def single() -> list[str]:
    return [sys.executable, "-m", "cnnlab", "train"]


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def trained(command: list[str]) -> subprocess.CompletedProcess:
    done = run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The data, and the lenet run of one process and of two, trained once for the module."""
    root = tmp_path_factory.mktemp("distributed")
    data = fake_data(root / "data")
    flags = [*LENET, "--data-dir", str(data), "--quiet"]
    one = trained([*single(), *flags, "--out", str(root / "one")])
    two = trained([*torchrun(), *flags, "--out", str(root / "two")])
    return {"data": data, "root": root, "one": (root / "one", one), "two": (root / "two", two)}


def largest_difference(run: Path, reference: Path) -> float:
    """The largest difference between the two runs' final tensors, relative to the largest
    magnitude in the reference tensor (at least 1e-3)."""
    ours, theirs = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    return max(
        float((ours[key].double() - theirs[key].double()).abs().max())
        / max(float(theirs[key].double().abs().max()), 1e-3)
        for key in theirs
    )


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_metrics(run: Path, reference: Path, tolerance: float = TOLERANCE) -> None:
    ours, theirs = records(run), records(reference)
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs, strict=True):
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(other[key], rel=tolerance), key
        for key in ("epoch", "train_acc", "val_acc", "lr", "clipped_steps", "skipped_steps"):
            assert mine[key] == pytest.approx(other[key]), key
    ours = json.loads((run / "evaluation.json").read_text())
    theirs = json.loads((reference / "evaluation.json").read_text())
    assert ours["confusion"] == theirs["confusion"] and ours["count"] == theirs["count"] == 37
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=tolerance)


def files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def printed(output: str, run: Path) -> str:
    """What a run printed, but for its timings and its folder's name."""
    output = re.sub(r"[\d,.]+ img/s\s+[\d.]+ s", "", output.replace(str(run), "RUN"))
    return re.sub(r"seconds from process start: .*", "", output)


def test_two_processes_train_the_weights_of_one_on_the_same_global_batch(runs):
    (one, one_output), (two, two_output) = runs["one"], runs["two"]
    assert largest_difference(two, one) < TOLERANCE
    assert_same_metrics(two, one)
    # the run folder was written once, by rank 0: the same files, no temp files left
    assert files(two) == files(one)
    assert not [name for name in files(two) if Path(name).name.startswith(".")]
    assert len(records(two)) == 3
    assert "batch 4 (2 processes x 2)" in (two / "summary.txt").read_text()
    # every line printed once: what one process prints, timings aside
    assert printed(two_output.stdout, two) == printed(one_output.stdout, one)
    assert "cnnlab train" not in two_output.stderr


def test_a_stopped_two_process_run_resumes_in_one_process(runs):
    stopped = runs["root"] / "stopped"
    flags = [*LENET, "--data-dir", str(runs["data"]), "--out", str(stopped)]
    process = TrainProcess(flags, command=torchrun(), env=ENV)
    process.wait_for("epoch 1/3 [")
    process.signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    code = process.finish(90)
    stderr = process.stderr
    assert code != 0, stderr[-3000:]
    said = re.findall(r"cnnlab train: SIGTERM: stopped (.*?); checkpoint written", stderr)
    assert len(said) == 1, stderr[-3000:]  # rank 0 alone
    assert (stopped / "checkpoints" / "last.safetensors").is_file()
    resumed = trained([*single(), "--resume", str(stopped)])
    assert resumed.stdout.startswith(f"resuming {stopped} at epoch ")
    one = runs["one"][0]
    assert largest_difference(stopped, one) < TOLERANCE
    assert_same_metrics(stopped, one)


def test_synchronised_batchnorm_trains_like_one_process(runs, tmp_path):
    flags = [
        *("--model", "lenet_bn", "--epochs", "1", "--batch-size", "8", "--lr", "0.01"),
        *("--val-split", "0.2", "--precise-bn", "3", "--precision", "fp32"),
        *("--memory-format", "contiguous", "--device", "cpu", "--threads", "1", "--quiet"),
        *("--data-dir", str(runs["data"]), "--sync-bn"),
    ]
    trained([*single(), *flags, "--out", str(tmp_path / "one")])
    trained([*torchrun(), *flags, "--out", str(tmp_path / "two")])
    # BatchNorm's running statistics included, recomputed from 3 batches (--precise-bn)
    assert largest_difference(tmp_path / "two", tmp_path / "one") < BATCHNORM_TOLERANCE
    assert_same_metrics(tmp_path / "two", tmp_path / "one", BATCHNORM_TOLERANCE)


def test_torchrun_refuses_a_batch_the_processes_cannot_share_in_one_line(runs, tmp_path):
    flags = [*LENET, "--data-dir", str(runs["data"]), "--out", str(tmp_path / "run")]
    refused = run([*torchrun(), *flags, "--batch-size", "7"])
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.startswith("cnnlab train")]
    assert lines == [
        "cnnlab train: error: --batch-size 7 is the global batch, shared by the 2 processes of "
        "this torchrun job: it must be divisible by 2 (e.g. 6)"
    ]
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_both_processes_at_the_same_step_in_one_line(runs, tmp_path):
    flags = [*LENET, "--lr", "1e37", "--data-dir", str(runs["data"]), "--quiet"]
    # torchrun looks at its workers every 2 s, not every 0.1 s: once one rank has exited, the
    # other gets time to exit by itself rather than by torchrun's SIGTERM
    stopped = run([*torchrun("--monitor-interval", "2"), *flags, "--out", str(tmp_path / "run")])
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("cnnlab train")]
    assert len(lines) == 1, stopped.stderr[-3000:]
    assert re.match(r"cnnlab train: error: the training loss became NaN or infinite at ", lines[0])
    # both ranks ended by themselves with the CLI's exit code: no crash, no hang
    assert sorted(re.findall(r"exitcode\s+:\s+(-?\d+)", stopped.stderr)) == ["2", "2"]


# ---- the pieces, in this process ---------------------------------------------------------------


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_ranks_parts_make_up_the_batches_of_one_process(ranks):
    images = torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1).expand(23, 1, 2, 2)
    labels = torch.arange(23)
    whole = InMemoryLoader(images, labels, 6, seed=3)
    parts = [InMemoryLoader(images, labels, 6, seed=3, shard=(r, ranks)) for r in range(ranks)]
    assert all(len(part) == len(whole) == 4 for part in parts)
    for index, batches in enumerate(
        zip(whole.epoch_batches(1), *(p.epoch_batches(1) for p in parts), strict=True)
    ):
        (_, expected), *shares = batches
        assert torch.equal(torch.cat([share_labels for _, share_labels in shares]), expected)
        sizes = [len(share_labels) for _, share_labels in shares]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == whole.global_size(index)


def test_torchrun_environment_is_read_and_checked():
    assert launched_ranks({}) is None
    assert launched_ranks({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: plain
    address = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    ranks = launched_ranks({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", **address})
    assert ranks == Ranks(1, 4, 1) and not ranks.is_main and ranks.shard == (1, 4)
    with pytest.raises(CnnlabError, match=r"RANK='x' is not a whole number"):
        launched_ranks({"RANK": "x", "WORLD_SIZE": "2", **address})
    with pytest.raises(CnnlabError, match=r"RANK=2 and WORLD_SIZE=2: expected 0 <= RANK"):
        launched_ranks({"RANK": "2", "WORLD_SIZE": "2", **address})
    with pytest.raises(CnnlabError, match=r"MASTER_ADDR and MASTER_PORT not: start cnnlab"):
        launched_ranks({"RANK": "0", "WORLD_SIZE": "2"})


def test_global_batches_that_leave_a_process_without_images_are_refused():
    Ranks(0, 4).check_batches(256, 60000)  # 234 batches of 256, the last of 96
    with pytest.raises(CnnlabError, match=r"must be divisible by 4 \(e.g. 8\)"):
        Ranks(0, 4).check_batches(10, 100)
    with pytest.raises(CnnlabError, match=r"holds 2 images, fewer than the 4 processes"):
        Ranks(0, 4).check_batches(8, 98)


def test_a_single_process_runs_without_process_group_or_collectives(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run_job(lambda: 7) == 7
    assert not torch.distributed.is_initialized()
    alone, sums = Ranks(), torch.ones(3)
    assert alone.total(sums) is sums and alone.agree("loss", 15) == ("loss", 15)
    assert alone.from_main(lambda: "made") == "made" and alone.everywhere(False) is False
    refuse_torchrun("cv")  # nothing to refuse


def test_other_commands_refuse_to_run_once_per_process(monkeypatch):
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CnnlabError, match=r"cnnlab cv does not run under torchrun \(its 2 proc"):
        refuse_torchrun("cv")


def test_the_scaling_benchmark_launches_and_tabulates_its_layouts():
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))  # as when the script runs: its `machine` module
    spec = importlib.util.spec_from_file_location(
        "distributed_scaling", benchmarks / "distributed_scaling.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.variants(["lenet", "lenet_bn"], ["1x2", "2x1"])
    assert rows == [
        ("lenet", "1x2", False),
        ("lenet", "2x1", False),
        ("lenet_bn", "1x2", False),
        ("lenet_bn", "2x1", False),
        ("lenet_bn", "2x1", True),
    ]
    launched = bench.command("2x1", ["--model", "lenet"])
    assert launched[1:3] == ["-m", "torch.distributed.run"] and launched[-2:] == ["--threads", "1"]
    assert bench.command("1x2", [])[1:] == ["-m", "cnnlab", "train", "--threads", "2"]
    results = {row: [1000.0, 1200.0] for row in rows} | {("lenet", "2x1", False): [1650.0]}
    text = bench.table(results, rows)
    assert "| lenet | 28x28 | 256 | 2x1 | 1,650 | 1.50x |" in text
    assert "| lenet_bn | 28x28 | 256 | 2x1 --sync-bn | 1,100 | 1.00x |" in text
