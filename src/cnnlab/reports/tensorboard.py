"""TensorBoard event files for a training run (`cnnlab train --tensorboard`).

Written to <run folder>/tensorboard, against the training step (batches trained so far; an
epoch's points sit at its last step):

    step/loss, step/lr                  the batch's training loss and the learning rate
    grad_norm/<layer>, grad_norm/total  L2 norm of the gradients per layer, and of all of them
    epoch/<key>                         every number of the epoch's metrics.jsonl record
    weights/<parameter>                 a histogram of each parameter at the end of each epoch
    the graph                           the model traced in eval mode, once, when the run starts
    images/train_batch                  augmented training images, de-normalised, once

Step values are logged every few steps: a logged step costs a host sync and tens of
microseconds per layer, so the interval is re-planned at each logged step from the measured cost
and step time to keep logging under LOG_BUDGET of training time; the steps between only count.

A resumed run appends a new event file to the same folder that begins by purging (SessionLog
START) whatever the previous process logged after its checkpoint, so no step appears twice.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
import weakref

import torch
from torch import nn

from cnnlab.errors import CnnlabError

# the share of training time that step logging may take: half of a 2 % target, because the
# step time it is planned from is measured on a machine that may be busy with other work
LOG_BUDGET = 0.01
FIRST_INTERVAL = 10  # steps from the first logged step to the second, before any timing
SAMPLE_IMAGES = 16
GRAPH_BATCH = 2  # images traced for the graph: its structure does not depend on the batch


def summary_writer_class():
    """torch's SummaryWriter, imported only when asked for: it needs the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CnnlabError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            'pip install "cnnlab[tensorboard]"'
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """What the trainer reports to TensorBoard. Does nothing unless `enabled` (with
    --tensorboard, in the process that writes the run folder) and started."""

    def __init__(self, enabled: bool):
        # checked here, when the trainer is set up: a missing package stops the run before
        # data, model or run folder are made
        self.writer_class = summary_writer_class() if enabled else None
        self.writer = None

    def start(self, trainer, position: dict) -> None:
        """Open the event file for `trainer`'s run, which continues at `position` (an epoch
        and its next batch); a fresh run also gets the graph and sample images."""
        if self.writer_class is None or trainer.run is None:
            return
        self.steps_per_epoch = len(trainer.train_loader)
        self.step = position["epoch"] * self.steps_per_epoch + position["next_batch"]
        self.model, self.optimizer, self.scaler = trainer.model, trainer.optimizer, trainer.scaler
        self.layer_names, self.trainable = layers(self.model)
        self.writer = self.writer_class(
            trainer.run.path / "tensorboard", purge_step=self.step + 1 if self.step else None
        )
        # a run ended by an error does not reach close(): its last steps are still written
        self.close_at_exit = weakref.finalize(self, self.writer.close)
        self.next_log, self.interval, self.last_logged = self.step + 1, FIRST_INTERVAL, None
        if self.step == 0:
            images, _ = next(iter(trainer.train_loader.epoch_batches(0)))
            self.add_images(images, trainer.train_loader.pipeline)
            self.add_graph(images[:GRAPH_BATCH], trainer.echo)

    def add_images(self, images: torch.Tensor, pipeline) -> None:
        shown = images[:SAMPLE_IMAGES].detach().float().cpu()
        if pipeline is not None:
            shown = shown * pipeline.std.view(1, -1, 1, 1) + pipeline.mean.view(1, -1, 1, 1)
        self.writer.add_images("images/train_batch", shown.clamp(0, 1), 0)

    def add_graph(self, images: torch.Tensor, echo) -> None:
        """Trace the model in eval mode (auxiliary heads off); a model that cannot be traced
        costs only its graph, with one warning."""
        modes = {module: module.training for module in self.model.modules()}
        try:
            # the tracer prints its error and warns about Python values it freezes
            with (
                torch.no_grad(),
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                self.writer.add_graph(self.model, images)
        except Exception as error:  # whatever tracing raises, training goes on
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            echo(
                f"warning: TensorBoard gets no model graph: tracing {type(self.model).__name__} "
                f"failed ({reason})"
            )
        finally:
            for module, training in modes.items():
                module.training = training

    # ---- steps ----------------------------------------------------------------------------

    def after_backward(self, loss: torch.Tensor) -> None:
        """Called by every training step once the gradients exist; acts every few steps."""
        if self.writer is None:
            return
        self.step += 1
        if self.step < self.next_log:
            return
        started = time.perf_counter()
        self.log_step(loss)
        self.plan(started, time.perf_counter())

    def log_step(self, loss: torch.Tensor) -> None:
        loss_value, *norms = self.device_values(loss).tolist()  # the one host sync
        # fp16 loss scaling multiplies the gradients; the norms are the true ones
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        add = self.writer.add_scalar
        add("step/loss", loss_value, self.step)
        add("step/lr", float(self.optimizer.param_groups[0]["lr"]), self.step)
        for name, norm in zip([*self.layer_names, "total"], norms, strict=True):
            add(f"grad_norm/{name}", norm / scale, self.step)

    def device_values(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss, each layer's gradient norm and the total norm, in one tensor on the device
        (a parameter without a gradient in this step adds nothing to its layer's norm)."""
        present = [(param.grad, layer) for param, layer in self.trainable if param.grad is not None]
        values = torch.zeros(len(self.layer_names) + 2, device=loss.device)
        values[0] = loss.detach().float()
        if present:
            norms = torch.stack(
                [torch.linalg.vector_norm(grad, dtype=torch.float32) for grad, _ in present]
            )
            index = torch.tensor([layer for _, layer in present], device=loss.device)
            squares = torch.zeros(len(self.layer_names), device=loss.device)
            squares.index_add_(0, index, norms.square())
            values[1:-1] = squares.sqrt()
            values[-1] = squares.sum().sqrt()
        return values

    def plan(self, started: float, finished: float) -> None:
        """The next step to log: as far ahead as logging this one took, divided by LOG_BUDGET,
        in step times measured since the previous logged step; at least every epoch."""
        if self.last_logged is not None:
            step, ended = self.last_logged
            step_seconds = max((started - ended) / (self.step - step), 1e-9)
            self.interval = math.ceil((finished - started) / (LOG_BUDGET * step_seconds))
        self.interval = min(max(self.interval, 1), self.steps_per_epoch)
        self.next_log = self.step + self.interval
        self.last_logged = (self.step, finished)

    # ---- epochs and the end ---------------------------------------------------------------

    def end_epoch(self, record: dict) -> None:
        """The epoch's record (as in metrics.jsonl) and the weights' histograms, written out."""
        if self.writer is None:
            return
        step = record["epoch"] * self.steps_per_epoch
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        for name, param in self.model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float(), step)
        self.writer.flush()
        # evaluation and checkpoints between epochs are no step time
        self.last_logged = None

    def close(self) -> None:
        """Write out what is queued and close the event file; the log does nothing after."""
        if self.writer is not None:
            self.close_at_exit()
            self.writer = None


def layers(model: nn.Module) -> tuple[list[str], list[tuple[nn.Parameter, int]]]:
    """The names of the layers with trainable parameters, and each such parameter with the
    index of its layer (the module holding it)."""
    index: dict[str, int] = {}  # in the order of the parameters
    trainable = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            layer = name.rpartition(".")[0] or name
            trainable.append((param, index.setdefault(layer, len(index))))
    return list(index), trainable
