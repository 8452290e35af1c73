"""The training engine: one loop for every zoo model, dataset and setting.

`Trainer(config).fit()` trains, evaluates each epoch on the validation split, checkpoints, and
finally evaluates on the test split, writing everything to the run folder (see run.py). What
the classic notes dwell on is explicit here: `model.train()` for steps and `model.eval()` for
evaluation (dropout off, BatchNorm on running statistics); auxiliary-head losses (GoogLeNet,
Inception-v3) weighted by `aux_weight` in training only; L2 weight decay in the optimiser
(decoupled for AdamW) and an optional L1 penalty in the loss; gradient-norm clipping, counted.

Loss and accuracy accumulate on the device; the host reads them only when the progress bar
redraws and at the end of an epoch. A NaN or infinite loss or gradient is caught before the
optimizer step (one host sync per step): the run stops naming the epoch and step, or with
`nonfinite="skip"` the step is skipped and counted. Running out of memory names the batch
size and what to try. SIGINT or SIGTERM finishes the current
step, writes checkpoints/last and stops with exit code 130 or 143; `Trainer.resume(folder)`
continues from it exactly (same weights as an uninterrupted run with `deterministic`, on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import time
import warnings

import torch
from torch import nn

from cnnlab.clock import seconds_since_start
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.splits import class_weights
from cnnlab.errors import CheckpointError, CnnlabError, NonFiniteError, OutOfMemory
from cnnlab.train.batchnorm import frozen_norms, recompute_batchnorm
from cnnlab.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnnlab.train.config import TrainConfig, config_from, load_toml
from cnnlab.train.ema import WeightAverage
from cnnlab.train.evaluate import Evaluation, autocast, evaluate
from cnnlab.train.fast_path import settle
from cnnlab.train.metrics import RunningMetrics
from cnnlab.train.optim import build_optimizer, build_schedule, l1_penalty
from cnnlab.train.progress import EpochBar
from cnnlab.train.run import RunFolder
from cnnlab.train.setup import RunData, build_model, load_run_data, pipelines
from cnnlab.train.stopping import Interrupted, catch_stop_signals, notify

SKIP_LIMIT = 10  # nonfinite="skip" stops after this many non-finite steps in a row


class NonFiniteStep(NonFiniteError):
    """A training step refused before the weights changed: its `what` ("loss" or "gradients")
    was NaN or infinite."""

    def __init__(self, what: str):
        super().__init__(f"the training {what} became NaN or infinite; the step was not applied")
        self.what = what


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run: RunFolder | None = None,
        echo=print,
        data: RunData | None = None,
        model: nn.Module | None = None,
    ):
        """`data` replaces loading the configured dataset (cross-validation folds use it);
        `model` replaces building config.model (the explain experiments train their own)."""
        self.config = config.resolved()
        self.echo = echo
        self.run = run
        self.data = data
        self.given_model = model
        self.final_evaluation: Evaluation | None = None
        self.resuming = run is not None
        self.history: list[dict] = []
        self.timeline: dict[str, float] = {}  # seconds from process start at each stage
        self.stop_signal: int | None = None
        self.skipped = 0  # the epoch's steps skipped as non-finite (nonfinite="skip")
        self.skipped_in_a_row = 0
        self.allow_mismatch = False  # resume a checkpoint of another model or data (see resume)
        self.rotate_last = True  # whether saving `last` keeps the file it replaces (see save)

    @classmethod
    def resume(cls, folder, echo=print, allow_mismatch: bool = False) -> Trainer:
        """Continue the run in `folder` with its config.toml. A checkpoint written for another
        model, class list or dataset than config.toml's is refused, unless `allow_mismatch`
        (then its weights must still fit the model)."""
        run = RunFolder.existing(folder)
        if not any(path.is_file() for path in run.resume_candidates()):
            raise CnnlabError(f"{folder} has no checkpoint to resume from ({run.last} is missing)")
        run.remove_debris()
        trainer = cls(config_from(load_toml(run.config_file)), run=run, echo=echo)
        trainer.allow_mismatch = allow_mismatch
        return trainer

    # ---- setting up -------------------------------------------------------------------------

    def setup(self, create_run: bool = True) -> None:
        """Data, model, loaders, optimiser, schedule and loss; and the run folder, unless
        `create_run` is False (the learning-rate finder trains without one)."""
        config = self.config
        self.mark("setup_started")
        torch.manual_seed(config.seed)
        # process-wide: set either way, so that an earlier deterministic run does not leak; only
        # on a change, because the call imports torch's compiler stack (2 s on a 2-core CPU)
        if torch.are_deterministic_algorithms_enabled() != config.deterministic:
            torch.use_deterministic_algorithms(config.deterministic)
        self.device = resolve_device(config.device)
        if config.deterministic and self.device.type == "cuda":
            # cuBLAS is deterministic only with a fixed workspace, and in deterministic mode
            # torch refuses every cuBLAS matmul unless this is set before the first one
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # torch starts with one thread per physical core (hyperthreads only contend for the
        # same vector units); the count used goes into the run's config
        if config.threads:
            torch.set_num_threads(config.threads)
        config = self.config = dataclasses.replace(config, threads=torch.get_num_threads())
        if self.data is None:
            self.data = load_run_data(config, progress=not config.quiet)
        self.mark("data_loaded")
        in_channels = self.data.train.image_size[0]
        self.num_classes = len(self.data.classes)
        model = self.given_model or build_model(config, self.num_classes, in_channels)
        self.model = model.to(self.device)
        train_pipeline, self.eval_pipeline = pipelines(config, self.data)
        self.train_loader = InMemoryLoader(
            self.data.train.images,
            self.data.train.labels,
            config.batch_size,
            seed=config.seed,
            device=self.device,
            pipeline=train_pipeline,
        )
        weights = None
        if config.class_weights:
            weights = class_weights(self.data.train.labels, self.num_classes).to(self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
        config = self.config = settle(
            config, self.model, self.train_loader, self.criterion, self.device, self.echo
        )
        self.mark("step_chosen")
        self.channels_last = config.memory_format == "channels_last"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.optimizer = build_optimizer(
            self.model, config.optimizer, config.lr, config.momentum, config.weight_decay
        )
        self.scheduler = build_schedule(
            self.optimizer,
            config.schedule,
            config.epochs,
            len(self.train_loader),
            warmup_epochs=config.warmup_epochs,
        )
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.eval_model = self.average.model if self.average else self.model  # what is evaluated
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        if self.run is None and create_run:
            self.run = RunFolder.create(config)
            self.run.write_config(config)
        self.mark("training_started")

    def eval_batches(self, data):
        loader = InMemoryLoader(
            data.images,
            data.labels,
            2 * self.config.batch_size,
            shuffle=False,
            device=self.device,
            pipeline=self.eval_pipeline,
        )
        return self.formatted(loader)

    def formatted(self, batches):
        """`batches` in the memory format the model runs in: a channels-last model fed
        contiguous images would convert every layer's input back and forth."""
        for images, labels in batches:
            yield self.in_model_format(images), labels

    def in_model_format(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Train for the configured epochs (or until early stopping); return the history."""
        self.setup()
        position = self.restore() if self.resuming else {"epoch": 0, "next_batch": 0}
        with catch_stop_signals(self.ask_to_stop):
            # a resumed run whose epochs already ended it (stopped between that decision and
            # the final report) goes straight to the report, as the uninterrupted run did
            first = self.config.epochs if self.ended() else position["epoch"]
            for epoch in range(first, self.config.epochs):
                record = self.train_epoch(epoch, position.get("next_batch", 0), position)
                position = {"epoch": epoch + 1, "next_batch": 0}
                self.end_epoch(epoch, record)
                if self.stop_signal is not None or self.ended():
                    break
            if self.stop_signal is not None:  # arrived after an epoch's last step
                raise self.stopped(f"after epoch {len(self.history)}")
        self.mark("training_finished")
        self.finish()
        return self.history

    def train_epoch(self, epoch: int, start: int, position: dict) -> dict:
        config, loader = self.config, self.train_loader
        self.model.train()
        for norm in frozen_norms(self.model):
            norm.eval()
        metrics = RunningMetrics()
        if start:
            metrics.load_state(position["metrics"], self.device)
        # a resumed epoch counts on from the clipped and skipped steps before the interruption
        clipped = torch.tensor(position.get("clipped", 0) if start else 0, device=self.device)
        self.skipped = position.get("skipped", 0) if start else 0
        bar = EpochBar(epoch + 1, config.epochs, len(loader), enabled=not config.quiet)
        started, seen = time.perf_counter(), 0
        batches = loader.epoch_batches(epoch, start, position.get("augment_state"))
        with self.memory_hint(f"training (epoch {epoch + 1})", config.batch_size):
            for index, (images, labels) in enumerate(batches, start=start):
                try:
                    loss, logits = self.step(images, labels, clipped)
                    metrics.update(loss * len(labels), logits, labels)
                    self.skipped_in_a_row = 0
                except NonFiniteStep as problem:
                    self.skip_or_stop(problem.what, epoch, index)
                seen += len(labels)
                if bar.due():
                    result = metrics.result()
                    rate = seen / max(time.perf_counter() - started, 1e-9)
                    bar.draw(index + 1, result["loss"], result["acc"], self.lr(), rate)
                if self.stop_signal is not None:
                    bar.close()
                    self.interrupt(epoch, index + 1, metrics, int(clipped))
        bar.close()
        if not self.weights_finite():  # the update of the epoch's last step overflowed
            self.stop_non_finite(f"the weights became NaN or infinite in epoch {epoch + 1}")
        seconds = time.perf_counter() - started
        result = metrics.result()
        return {
            "epoch": epoch + 1,
            "train_loss": result["loss"],
            "train_acc": result["acc"],
            "lr": self.lr(),
            "seconds": round(seconds, 3),
            "images_per_s": round(seen / max(seconds, 1e-9), 1),
            "clipped_steps": int(clipped),
            "skipped_steps": self.skipped,
        }

    def step(self, images, labels, clipped: torch.Tensor):
        """One optimisation step; the loss and logits, detached. A NaN or infinite loss or
        gradient raises NonFiniteStep before the weights, optimiser or schedule change."""
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        images = self.in_model_format(images)
        with autocast(self.device, config.precision):
            outputs = self.forward(images)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        loss = self.criterion(logits.float(), labels)
        if isinstance(outputs, dict):  # auxiliary heads count in training only, weighted
            for name, aux in outputs.items():
                if name != "logits":
                    loss = loss + config.aux_weight * self.criterion(aux.float(), labels)
        if config.l1:
            loss = loss + l1_penalty(self.model, config.l1)
        self.scaler.scale(loss).backward()
        self.check_finite(loss)
        if config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
            clipped += norm > config.clip_grad_norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.model)
        return loss.detach(), logits.detach().float()

    def mark(self, stage: str) -> None:
        """Record when `stage` was reached, in seconds from process start."""
        self.timeline[stage] = round(seconds_since_start(), 3)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_finite(self, loss: torch.Tensor) -> None:
        """Raise NonFiniteStep if the loss or a gradient is NaN or infinite, with one host sync:
        the gradients' largest magnitude (one fused pass) is NaN or infinite exactly when one
        of them is. Under fp16 loss scaling only the loss is checked: gradients overflowing the
        scale are the GradScaler's to skip, and it lowers the scale."""
        values = [loss.detach().float().reshape(1)]
        grads = [
            param.grad
            for group in self.optimizer.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        if grads and not self.scaler.is_enabled():
            values.append(nn.utils.get_total_norm(grads, math.inf).float().reshape(1))
        finite = torch.isfinite(torch.cat(values))
        if not finite.all():
            raise NonFiniteStep("loss" if not finite[0] else "gradients")

    def skip_or_stop(self, what: str, epoch: int, index: int) -> None:
        """After a step refused by check_finite: with `nonfinite="skip"` leave the weights as
        they are, keep the schedule in line with the batches and count the step. Else stop,
        naming where; so also when skipping cannot help: the weights themselves are no longer
        finite, or so many steps in a row failed (a whole epoch's, at most SKIP_LIMIT) that
        the weights, which skipping leaves as they are, must be what fails."""
        where = f"at epoch {epoch + 1}, step {index + 1}"
        if not self.weights_finite():
            self.stop_non_finite(f"the weights became NaN or infinite before the step {where}")
        if self.config.nonfinite != "skip":
            self.stop_non_finite(
                f"the training {what} became NaN or infinite {where}; the step was not applied",
                "--nonfinite skip to skip such steps, ",
            )
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= min(SKIP_LIMIT, len(self.train_loader)):
            self.stop_non_finite(
                f"{self.skipped_in_a_row} steps in a row (the last {where}) had a NaN or "
                f"infinite loss or gradients and were skipped: the weights no longer give finite "
                f"values"
            )
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns when no optimizer step came first
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.skipped += 1

    def weights_finite(self) -> bool:
        """Whether every weight and buffer (BatchNorm statistics too) is finite; one sync."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        return not tensors or bool(torch.isfinite(nn.utils.get_total_norm(tensors, math.inf)))

    def stop_non_finite(self, what: str, option: str = "") -> None:
        last = self.run.last if self.run is not None else None
        kept = last if last is not None and last.exists() else "none: no epoch finished"
        raise NonFiniteError(
            f"{what}; stopped (try a lower --lr, {option}or --clip-grad-norm); no checkpoint "
            f"was written from it: the last good checkpoint is {kept}"
        )

    @contextlib.contextmanager
    def memory_hint(self, doing: str, batch_size: int):
        """Running out of device or host memory while `doing` a batch of `batch_size` images
        becomes an OutOfMemory that says so and what to try; other errors pass unchanged."""
        try:
            yield
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not _out_of_memory(error):
                raise
            raise OutOfMemory(self.memory_advice(doing, batch_size)) from None

    def memory_advice(self, doing: str, batch_size: int) -> str:
        config = self.config
        cfg = getattr(self.model, "default_cfg", None)
        smallest = cfg.min_input_size[0] if cfg is not None else config.resize
        tips = [f"a smaller --batch-size (e.g. {max(1, config.batch_size // 2)})"]
        if config.precision == "fp32":
            tips.append("--precision bf16" + (" or fp16" if self.device.type == "cuda" else ""))
        if config.resize > smallest:
            tips.append(f"a smaller --resize ({config.model} takes down to {smallest})")
        return (
            f"out of {self.device.type} memory while {doing} on batches of {batch_size} images "
            f"of {config.resize}x{config.resize} ({config.precision}); try "
            + (", ".join(tips[:-1]) + " or " + tips[-1] if len(tips) > 1 else tips[0])
        )

    # ---- epochs, checkpoints, stopping ------------------------------------------------------

    def end_epoch(self, epoch: int, record: dict) -> None:
        self.recompute_batchnorm(epoch)
        val = self.evaluate(self.data.val) if self.data.val is not None else None
        record["val_loss"] = val.loss if val else None
        record["val_acc"] = val.acc if val else None
        target = self.config.target_acc
        if target is not None and val.acc >= target:
            record["time_to_target_s"] = round(seconds_since_start(), 3)
        self.history.append(record)
        self.run.write_metrics(self.history)
        improved = self.track_best(record)
        state = self.state(epoch + 1, 0)
        self.save(self.run.last, state)
        if improved:
            self.save(self.run.best, state)
        self.echo(_epoch_line(record, self.config.epochs))

    def recompute_batchnorm(self, epoch: int) -> None:
        """Precise BatchNorm statistics (see batchnorm.py) from `precise_bn` training batches,
        drawn without augmentation in a seeded order of their own."""
        if not self.config.precise_bn:
            return
        loader = InMemoryLoader(
            self.data.train.images,
            self.data.train.labels,
            self.config.batch_size,
            seed=self.config.seed + epoch,
            device=self.device,
            pipeline=self.eval_pipeline,
        )
        batches = itertools.islice(self.formatted(loader), self.config.precise_bn)
        recompute_batchnorm(self.eval_model, batches)

    def monitored(self) -> tuple[str, int]:
        """The metric that picks the best epoch, and +1 where larger is better."""
        if self.data.val is None:
            return "train_loss", -1
        metric = self.config.early_stopping_metric
        return metric, (1 if metric == "val_acc" else -1)

    def track_best(self, record: dict) -> bool:
        metric, sign = self.monitored()
        value = sign * record[metric]
        best = getattr(self, "best", None)
        if best is None or value > best["value"]:
            self.best = {"metric": metric, "value": value, "epoch": record["epoch"]}
            return True
        return False

    def reached_target(self) -> bool:
        """With `target_acc`, whether this epoch's validation accuracy reached it; the time from
        process start (start-up and data loading included) goes into the epoch's record."""
        record, target = self.history[-1], self.config.target_acc
        if target is None or record["val_acc"] < target:
            return False
        self.echo(
            f"reached validation accuracy {record['val_acc']:.4f} >= {target} at epoch "
            f"{record['epoch']}, {record['time_to_target_s']:.1f} s after the process started"
        )
        return True

    def ended(self) -> bool:
        """Whether the epochs so far end the run before its last epoch: the target accuracy
        was reached, or early stopping ran out of patience (the best weights are then loaded)."""
        if not self.history:
            return False
        if self.reached_target():
            return True
        if self.should_stop_early():
            self.echo(
                f"early stopping: no better {self.config.early_stopping_metric} for "
                f"{self.config.early_stopping} epochs; restoring the best weights"
            )
            load_checkpoint(self.run.best, self.model, extra_models=self.extras())
            return True
        return False

    def should_stop_early(self) -> bool:
        patience = self.config.early_stopping
        return bool(patience) and self.history[-1]["epoch"] - self.best["epoch"] >= patience

    def state(
        self,
        epoch: int,
        next_batch: int,
        metrics: RunningMetrics | None = None,
        clipped: int = 0,
    ) -> dict:
        return {
            "epoch": epoch,
            "next_batch": next_batch,
            "history": self.history,
            "best": getattr(self, "best", None),
            "metrics": metrics.state() if metrics is not None else None,
            "clipped": clipped,
            "skipped": self.skipped,
            "average_updates": self.average.updates if self.average else 0,
            "run": self.identity(),
        }

    def extras(self) -> dict:
        return {"ema": self.average.model} if self.average else {}

    def save(self, path, state: dict, generators: dict | None = None) -> None:
        # replacing `last` keeps its predecessor as `previous`, a fallback for resuming; but
        # not a `last` that a resume found unusable
        is_last = path == self.run.last
        keep = self.run.previous if is_last and self.rotate_last else None
        save_checkpoint(
            path,
            self.model,
            self.optimizer,
            self.scheduler,
            state,
            generators,
            self.extras(),
            keep_previous=keep,
        )
        self.rotate_last = self.rotate_last or is_last

    def interrupt(self, epoch: int, next_batch: int, metrics: RunningMetrics, clipped: int) -> None:
        generators = {}
        if self.train_loader.augment_generator is not None:
            generators["augment"] = self.train_loader.augment_generator.get_state()
        self.save(self.run.last, self.state(epoch, next_batch, metrics, clipped), generators)
        raise self.stopped(f"at epoch {epoch + 1}, step {next_batch}")

    def stopped(self, where: str) -> Interrupted:
        """The stop by `self.stop_signal`, once checkpoints/last holds the state `where`."""
        name = signal.Signals(self.stop_signal).name
        return Interrupted(
            f"{name}: stopped {where}; checkpoint written to {self.run.last}; continue with: "
            f"cnnlab train --resume {self.run.path}",
            128 + self.stop_signal,
        )

    def restore(self) -> dict:
        checkpoint = self.load_resumable()
        state = checkpoint.state
        if self.average is not None:
            self.average.updates = state.get("average_updates", 0)
        self.history = state["history"]
        if state.get("best"):
            self.best = state["best"]
        position = {"epoch": state["epoch"], "next_batch": state["next_batch"]}
        if state["next_batch"]:
            position["metrics"] = state["metrics"]
            position["clipped"] = state.get("clipped", 0)
            position["skipped"] = state.get("skipped", 0)
            position["augment_state"] = checkpoint.generators.get("augment")
        source = "" if self.resumed_from == self.run.last else f" from {self.resumed_from.name}"
        self.echo(
            f"resuming {self.run.path} at epoch {state['epoch'] + 1}, step {state['next_batch']}"
            + source
        )
        return position

    def load_resumable(self) -> Checkpoint:
        """Restore the model, optimiser, scheduler and weight average from the newest usable
        checkpoint of the run: `last`, else `previous`, else `best`, warning on stderr about
        each one skipped; a clear error if none can be loaded."""
        skipped = []
        for path in self.run.resume_candidates():
            if not path.is_file():
                if path == self.run.last:
                    problem = f"{path} is missing"
                    skipped.append(problem)
                    print(f"warning: cannot resume from {path.name}: {problem}", file=sys.stderr)
                continue
            try:
                checkpoint = load_checkpoint(
                    path,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    self.extras(),
                    check_state=lambda state, path=path: self.check_same_run(path, state),
                )
                _check_resumable(path, checkpoint.state)
            except CheckpointError as error:
                skipped.append(str(error))
                print(f"warning: cannot resume from {path.name}: {error}", file=sys.stderr)
                continue
            if skipped:
                print(f"warning: resuming from {path} instead", file=sys.stderr)
            self.resumed_from = path
            # an unusable `last` is replaced by the next save, never kept as `previous`
            self.rotate_last = path == self.run.last
            return checkpoint
        raise CheckpointError(
            f"cannot resume {self.run.path}: none of its checkpoints can be loaded "
            f"({'; '.join(skipped)})"
        )

    def identity(self) -> dict:
        """What a checkpoint must share with the run that resumes it: model, classes, data."""
        identity = {
            "model": self.config.model,
            "model_options": self.config.model_options,
            "dataset": self.config.dataset,
            "classes": self.data.classes,
            "in_channels": self.data.train.image_size[0],
            "input_size": self.config.resize,
            "training_images": len(self.data.train),
        }
        return json.loads(json.dumps(identity))  # as it reads back from a checkpoint

    def check_same_run(self, path, state) -> None:
        """Refuse (CnnlabError, not CheckpointError: no other checkpoint is tried) a checkpoint
        written for another model, class list or dataset than this run's config.toml, naming
        both sides; with `allow_mismatch`, warn and go on. Older checkpoints say nothing."""
        saved = state.get("run") if isinstance(state, dict) else None
        if not isinstance(saved, dict):
            return
        differences = [
            f"{key} {_shown(saved.get(key))} in the checkpoint but {_shown(value)} in "
            f"{self.run.config_file}"
            for key, value in self.identity().items()
            if saved.get(key) != value
        ]
        if not differences:
            return
        if self.allow_mismatch:
            self.echo(f"warning: resuming {path} despite: {'; '.join(differences)}")
            return
        raise CnnlabError(
            f"cannot resume {self.run.path}: {path} was written for another run: "
            f"{'; '.join(differences)}. Resume the run folder that checkpoint came from, or "
            f"give --allow-mismatch to continue from it anyway (its weights must still fit)"
        )

    def ask_to_stop(self, signum: int) -> None:
        """The signal handler: the loop stops at the next step boundary. The first signal
        decides the exit code; more (an impatient second Ctrl-C) change nothing, so they
        cannot break off the checkpoint being written."""
        if self.stop_signal is None:
            self.stop_signal = signum
            notify("\nstopping after this step, writing a checkpoint...\n")
        else:
            notify("already stopping: the checkpoint is being written, please wait...\n")

    # ---- the end ----------------------------------------------------------------------------

    def evaluate(self, data) -> Evaluation:
        # evaluation batches are twice the training batch (no gradients to keep)
        with self.memory_hint(f"evaluating on {data.name}", 2 * self.config.batch_size):
            return evaluate(
                self.eval_model,
                self.eval_batches(data),
                self.num_classes,
                self.device,
                self.config.precision,
                self.config.tta,
            )

    def finish(self) -> None:
        from cnnlab.train.report import write_final_report

        final_set = self.data.test if self.data.test is not None else self.data.val
        evaluation = self.evaluate(final_set) if final_set is not None else None
        self.final_evaluation = evaluation
        self.mark("evaluated")
        write_final_report(self, final_set, evaluation)


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


def _out_of_memory(error: BaseException) -> bool:
    """torch's device out-of-memory error, Python's MemoryError, or the RuntimeError of torch's
    CPU allocator ("DefaultCPUAllocator: can't allocate memory" / "not enough memory")."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return "DefaultCPUAllocator" in text and ("can't allocate" in text or "not enough" in text)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


def _epoch_line(record: dict, epochs: int) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_acc']:.4f}"
    )
    if record["val_loss"] is not None:
        line += f"  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
    line += (
        f"  lr {record['lr']:.3g}  {record['images_per_s']:,.0f} img/s  {record['seconds']:.1f} s"
    )
    if record["clipped_steps"]:
        line += f"  clipped {record['clipped_steps']} steps"
    if record.get("skipped_steps"):
        line += f"  skipped {record['skipped_steps']} non-finite steps"
    return line if math.isfinite(record["train_loss"]) else line + "  (non-finite loss)"
