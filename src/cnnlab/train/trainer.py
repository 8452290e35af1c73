"""The training engine: one loop for every zoo model, dataset and setting.

`Trainer(config).fit()` trains, evaluates each epoch on the validation split, checkpoints, and
finally evaluates on the test split, writing everything to the run folder (see run.py). What
the classic notes dwell on is explicit here: `model.train()` for steps and `model.eval()` for
evaluation (dropout off, BatchNorm on running statistics); auxiliary-head losses (GoogLeNet,
Inception-v3) weighted by `aux_weight` in training only; L2 weight decay in the optimiser
(decoupled for AdamW) and an optional L1 penalty in the loss; gradient-norm clipping, counted.

Loss, accuracy and non-finite checks accumulate on the device; the host reads them only when
the progress bar redraws and at the end of an epoch. SIGINT or SIGTERM finishes the current
step, writes checkpoints/last and stops with exit code 130 or 143; `Trainer.resume(folder)`
continues from it exactly (same weights as an uninterrupted run with `deterministic`, on CPU).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import signal
import sys
import time

import torch
from torch import nn

from cnnlab.clock import seconds_since_start
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.splits import class_weights
from cnnlab.errors import CnnlabError
from cnnlab.train.batchnorm import frozen_norms, recompute_batchnorm
from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.train.config import TrainConfig, config_from, load_toml
from cnnlab.train.ema import WeightAverage
from cnnlab.train.evaluate import Evaluation, autocast, evaluate
from cnnlab.train.fast_path import settle
from cnnlab.train.metrics import RunningMetrics
from cnnlab.train.optim import build_optimizer, build_schedule, l1_penalty
from cnnlab.train.progress import EpochBar
from cnnlab.train.run import RunFolder
from cnnlab.train.setup import RunData, build_model, load_run_data, pipelines
from cnnlab.train.stopping import Interrupted, catch_stop_signals


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

    @classmethod
    def resume(cls, folder, echo=print) -> Trainer:
        run = RunFolder.existing(folder)
        if not run.last.is_file():
            raise CnnlabError(f"{folder} has no checkpoint to resume from ({run.last} is missing)")
        return cls(config_from(load_toml(run.config_file)), run=run, echo=echo)

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
            for epoch in range(position["epoch"], self.config.epochs):
                record = self.train_epoch(epoch, position.get("next_batch", 0), position)
                position = {"epoch": epoch + 1, "next_batch": 0}
                self.end_epoch(epoch, record)
                if self.reached_target():
                    break
                if self.should_stop_early():
                    self.echo(
                        f"early stopping: no better {self.config.early_stopping_metric} for "
                        f"{self.config.early_stopping} epochs; restoring the best weights"
                    )
                    load_checkpoint(self.run.best, self.model, extra_models=self.extras())
                    break
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
        counter = torch.zeros((), dtype=torch.int64, device=self.device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        # a resumed epoch counts on from the clipped steps before the interruption
        clipped = torch.tensor(position.get("clipped", 0) if start else 0, device=self.device)
        bar = EpochBar(epoch + 1, config.epochs, len(loader), enabled=not config.quiet)
        started, seen = time.perf_counter(), 0
        batches = loader.epoch_batches(epoch, start, position.get("augment_state"))
        for index, (images, labels) in enumerate(batches, start=start):
            loss, logits = self.step(images, labels, clipped)
            counter += 1
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), counter + start - 1, first_bad)
            metrics.update(loss.detach() * len(labels), logits, labels)
            seen += len(labels)
            if bar.due():
                self.check_finite(first_bad, epoch)
                result = metrics.result()
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.draw(index + 1, result["loss"], result["acc"], self.lr(), rate)
            if self.stop_signal is not None:
                bar.close()
                self.interrupt(epoch, index + 1, metrics, int(clipped))
        bar.close()
        self.check_finite(first_bad, epoch)
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
        }

    def step(self, images, labels, clipped: torch.Tensor):
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

    def check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        step = int(first_bad)
        if step >= 0:
            raise CnnlabError(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
                f"stopped (try a lower --lr or --clip-grad-norm); the last good checkpoint "
                f"is {self.run.last if self.run.last.exists() else 'none: no epoch finished'}"
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
            "average_updates": self.average.updates if self.average else 0,
        }

    def extras(self) -> dict:
        return {"ema": self.average.model} if self.average else {}

    def save(self, path, state: dict, generators: dict | None = None) -> None:
        save_checkpoint(
            path, self.model, self.optimizer, self.scheduler, state, generators, self.extras()
        )

    def interrupt(self, epoch: int, next_batch: int, metrics: RunningMetrics, clipped: int) -> None:
        generators = {}
        if self.train_loader.augment_generator is not None:
            generators["augment"] = self.train_loader.augment_generator.get_state()
        self.save(self.run.last, self.state(epoch, next_batch, metrics, clipped), generators)
        name = signal.Signals(self.stop_signal).name
        raise Interrupted(
            f"{name}: stopped at epoch {epoch + 1}, step {next_batch}; checkpoint written to "
            f"{self.run.last}; continue with: cnnlab train --resume {self.run.path}",
            128 + self.stop_signal,
        )

    def restore(self) -> dict:
        checkpoint = load_checkpoint(
            self.run.last, self.model, self.optimizer, self.scheduler, self.extras()
        )
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
            position["augment_state"] = checkpoint.generators.get("augment")
        self.echo(
            f"resuming {self.run.path} at epoch {state['epoch'] + 1}, step {state['next_batch']}"
        )
        return position

    def ask_to_stop(self, signum: int) -> None:
        if self.stop_signal is None:
            print("\nstopping after this step, writing a checkpoint...", file=sys.stderr)
        self.stop_signal = signum

    # ---- the end ----------------------------------------------------------------------------

    def evaluate(self, data) -> Evaluation:
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
    return line if math.isfinite(record["train_loss"]) else line + "  (non-finite loss)"
