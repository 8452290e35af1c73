"""TensorBoard logging (`--tensorboard`): the event files are read back with TensorBoard's own
reader and must hold what the run measured, at the right steps, once each, also across a
resume; logging changes nothing in the training itself."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.reports.tensorboard import LOG_BUDGET, TensorBoardLog
from cnnlab.train.stopping import Interrupted
from cnnlab.train.trainer import Trainer
from trainer_helpers import (
    assert_same_tensors,
    make_config,
    read_metrics,
    stop_after,
    train,
    weights,
    without_timing,
)

# deterministic: no timing picks the arithmetic, so runs with and without logging compare exactly
LOGGED = dict(epochs=2, val_split=0.2, deterministic=True, tensorboard=True)
LENET_LAYERS = ["features.0", "features.3", "hidden.0", "hidden.2", "fc"]  # with parameters


def read_events(run: Path) -> EventAccumulator:
    everything = {"scalars": 0, "histograms": 0, "images": 0}  # keep every point
    return EventAccumulator(str(run / "tensorboard"), size_guidance=everything).Reload()


def steps_of(events: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def recording_losses(losses: list[float]):
    """An on_setup action for `train`: every training step's loss goes into `losses`."""

    def wrap(trainer):
        step = trainer.step

        def recording(*args):
            loss, logits = step(*args)
            losses.append(float(loss))
            return loss, logits

        trainer.step = recording

    return wrap


def assert_epochs_logged(run: Path, events: EventAccumulator, steps_per_epoch: int) -> None:
    """Every number of every metrics.jsonl record, one point per epoch at its last step."""
    records = read_metrics(run)
    numbers = [key for key, value in records[0].items() if key != "epoch" and value is not None]
    assert {"train_loss", "val_acc", "lr", "images_per_s", "clipped_steps"} <= set(numbers)
    for key in numbers:
        logged = events.Scalars(f"epoch/{key}")
        assert [event.step for event in logged] == [r["epoch"] * steps_per_epoch for r in records]
        expected = [pytest.approx(r[key], rel=1e-6) for r in records]  # stored as float32
        assert [event.value for event in logged] == expected, key


def next_second() -> None:
    """Wait for the next second: TensorBoard reads event files in name order, and a name is the
    second it was made, then the process id, then a counter (9 sorts after 10): two files made
    by one process in one second may be read in the wrong order."""
    time.sleep(1.01 - time.time() % 1)


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory) -> dict:
    """The same deterministic run with and without --tensorboard."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the other tests, so the arithmetic is the same
    losses: list[float] = []
    try:
        trainer, lines = train(make_config(shared_data, root / "logged", **LOGGED))
        train(make_config(shared_data, root / "plain", **{**LOGGED, "tensorboard": False}))
        train(make_config(shared_data, root / "again", **LOGGED), recording_losses(losses))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    steps = len(trainer.train_loader)
    assert len(losses) == 2 * steps
    return {"root": root, "steps": steps, "lines": lines, "losses": losses}


# ---- what the event files hold ------------------------------------------------------------------


def test_epochs_are_logged_as_in_metrics_jsonl(runs):
    run = runs["root"] / "logged"
    assert_epochs_logged(run, read_events(run), runs["steps"])


def test_steps_log_loss_learning_rate_and_gradient_norms_per_layer(runs):
    events = read_events(runs["root"] / "again")
    logged = steps_of(events, "step/loss")
    assert logged[0] == 1 and logged == sorted(set(logged)) and logged[-1] <= 2 * runs["steps"]
    # the step numbers are the trainer's: each point holds the loss of that very step
    values = [event.value for event in events.Scalars("step/loss")]
    assert values == [pytest.approx(runs["losses"][step - 1], rel=1e-6) for step in logged]
    assert [event.value for event in events.Scalars("step/lr")] == [pytest.approx(0.1)] * len(
        logged
    )

    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("grad_norm/")]
    assert tags == [f"grad_norm/{layer}" for layer in [*LENET_LAYERS, "total"]]
    for index, step in enumerate(logged):
        norms = {tag: events.Scalars(tag)[index] for tag in tags}
        assert all(point.step == step and point.value > 0 for point in norms.values())
        layer_squares = sum(norms[f"grad_norm/{layer}"].value ** 2 for layer in LENET_LAYERS)
        assert math.sqrt(layer_squares) == pytest.approx(norms["grad_norm/total"].value, rel=1e-5)


def test_weights_histograms_graph_and_sample_images(runs):
    events = read_events(runs["root"] / "logged")
    model = weights(runs["root"] / "logged" / "model.safetensors")
    assert sorted(events.Tags()["histograms"]) == sorted(f"weights/{name}" for name in model)
    final = events.Histograms("weights/fc.weight")[-1]
    assert final.step == 2 * runs["steps"]
    assert final.histogram_value.num == model["fc.weight"].numel()
    assert final.histogram_value.min == pytest.approx(float(model["fc.weight"].min()))

    graph = events.Graph()
    assert any("LeNet/Sequential[features]/Conv2d[0]" in node.name for node in graph.node)
    [image] = events.Images("images/train_batch")
    assert image.step == 0 and image.encoded_image_string.startswith(b"\x89PNG")
    assert image.width > 28 and image.height > 28  # a grid of several 28x28 images
    assert not any(line.startswith("warning") for line in runs["lines"])


def test_logging_changes_nothing_and_is_off_by_default(runs):
    logged, plain = runs["root"] / "logged", runs["root"] / "plain"
    assert_same_tensors(weights(logged / "model.safetensors"), weights(plain / "model.safetensors"))
    assert without_timing(read_metrics(logged)) == without_timing(read_metrics(plain))
    assert not (plain / "tensorboard").exists()


def test_missing_tensorboard_is_named_before_anything_is_made(fake_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(CnnlabError, match=r'pip install "cnnlab\[tensorboard\]"'):
        train(make_config(fake_data, tmp_path / "run", tensorboard=True))
    assert not (tmp_path / "run").exists()


def test_steps_between_logged_ones_do_nothing():
    """No host sync, not even a look at the loss, on the steps that are not logged."""
    log = TensorBoardLog(enabled=True)
    log.writer, log.step, log.next_log = object(), 10, 15  # as if started at step 10
    for _ in range(4):
        log.after_backward(None)
    assert log.step == 14
    with pytest.raises(AttributeError):  # step 15 is logged: it reads the loss
        log.after_backward(None)


def test_interval_keeps_logging_within_budget():
    assert LOG_BUDGET <= 0.02
    log = TensorBoardLog(enabled=False)
    log.steps_per_epoch, log.interval, log.step, log.last_logged = 1000, 10, 20, (10, 5.0)
    log.plan(started=6.0, finished=6.01)  # steps of 0.1 s since step 10, logging took 0.01 s
    share = 0.01 / (log.interval * 0.1)  # of the time until the next logged step
    assert share <= LOG_BUDGET < 0.01 / ((log.interval - 1) * 0.1)  # and not logged less often
    assert (log.next_log, log.last_logged) == (20 + log.interval, (20, 6.01))
    log.steps_per_epoch, log.step = 3, log.next_log
    log.plan(started=6.02, finished=6.52)  # slow logging: still once an epoch at least
    assert log.interval == 3


# ---- resuming -----------------------------------------------------------------------------------


def crash_at(trainer: Trainer, steps: int) -> None:
    """The process dies (an exception) during training step number `steps`."""
    step, done = trainer.step, [0]

    def crashing(*args):
        done[0] += 1
        if done[0] == steps:
            raise RuntimeError("killed")
        return step(*args)

    trainer.step = crashing


@pytest.mark.parametrize("stop", ["signal-after-epoch-1", "crash-in-epoch-2"])
def test_resumed_run_logs_every_step_once(stop, shared_data, tmp_path):
    run = tmp_path / "run"
    first = Trainer(make_config(shared_data, run, **LOGGED), echo=lambda line: None)
    steps = 7  # 100 training images (2 of each class validate) in batches of 16
    if stop == "signal-after-epoch-1":
        stop_after(first, steps)
        with pytest.raises(Interrupted):
            first.fit()
    else:  # steps past the checkpoint of epoch 1 were logged: the resume must drop them
        crash_at(first, steps + 4)
        with pytest.raises(RuntimeError, match="killed"):
            first.fit()
        first.tensorboard.close()  # what the end of the process does
        assert steps_of(read_events(run), "step/loss")[-1] > steps
    next_second()
    resumed = Trainer.resume(run, echo=lambda line: None)
    resumed.fit()
    assert len(resumed.train_loader) == steps

    events = read_events(run)
    assert_epochs_logged(run, events, steps)
    for tag in events.Tags()["scalars"]:
        logged = steps_of(events, tag)
        assert logged == sorted(set(logged)), tag
    assert len(events.Histograms("weights/fc.weight")) == 2
    assert len(events.Images("images/train_batch")) == 1  # from the first process only

    files = sorted((run / "tensorboard").iterdir())
    assert len(files) == 2
    starts = [
        event.step
        for event in EventFileLoader(str(files[1])).Load()
        if event.HasField("session_log")
    ]
    assert starts == [steps + 1]  # everything logged after the checkpoint is discarded


# ---- models the tracer cannot take whole --------------------------------------------------------


class TinyNet(nn.Module):
    """A linear classifier; with `aux`, training outputs a dict with an auxiliary head as
    GoogLeNet's do; with `untraceable`, it refuses to be traced (as models the tracer cannot
    follow do, in one way or another)."""

    def __init__(self, aux: bool = False, untraceable: bool = False):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.aux = nn.Linear(28 * 28, 10) if aux else None
        self.untraceable = untraceable

    def forward(self, images):
        if self.untraceable and torch.jit.is_tracing():
            raise RuntimeError("cannot trace this\nsecond line")
        flat = images.flatten(1)
        if self.training and self.aux is not None:
            return {"logits": self.fc(flat), "aux": self.aux(flat)}
        return self.fc(flat)


@pytest.mark.parametrize("model", ["aux-heads", "untraceable"])
def test_graph_is_traced_in_eval_mode_or_skipped_with_one_warning(
    model, fake_data, tmp_path, capsys
):
    net = TinyNet(aux=True, untraceable=model == "untraceable")
    config = make_config(fake_data, tmp_path / "run", tensorboard=True, memory_format="contiguous")
    lines: list[str] = []
    trainer = Trainer(config, echo=lines.append, model=net)
    trainer.fit()

    assert (tmp_path / "run" / "model.safetensors").is_file() and net.training
    events = read_events(tmp_path / "run")
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(steps_of(events, "epoch/train_loss")) == 1
    if model == "aux-heads":
        assert events.Tags()["graph"] and not warnings
        assert "grad_norm/aux" in events.Tags()["scalars"]
    else:
        assert not events.Tags()["graph"]
        assert warnings == [
            "warning: TensorBoard gets no model graph: tracing TinyNet failed (cannot trace this)"
        ]
        assert "cannot trace" not in capsys.readouterr().out  # the tracer's own print
