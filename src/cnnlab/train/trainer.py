"""The training engine: one loop for every zoo model, dataset and setting.

`Trainer(config).fit()` trains, evaluates each epoch on the validation split, checkpoints, and
finally evaluates on the test split, writing everything to the run folder (see runs/folder.py). What
the classic notes dwell on is explicit here: `model.train()` for steps and `model.eval()` for
evaluation (dropout off, BatchNorm on running statistics); auxiliary-head losses (GoogLeNet,
Inception-v3) weighted by `aux_weight` in training only; L2 weight decay in the optimiser
(decoupled for AdamW) and an optional L1 penalty in the loss; gradient-norm clipping, counted.

Loss and accuracy accumulate on the device; the host reads them only when the progress bar
redraws and at the end of an epoch. A NaN or infinite loss or gradient is caught before the
optimizer step (one host sync per step): the run stops naming the epoch and step, or with
`nonfinite="skip"` the step is skipped and counted. Running out of memory names the batch
size and what to try (failures.py). SIGINT or SIGTERM finishes the current step, writes
checkpoints/last and stops with exit code 130 or 143 (checkpointing.py); `Trainer.resume(folder)`
continues from it exactly (same weights as an uninterrupted run with `deterministic`, on CPU).
Under torchrun each process trains its part of every global batch with DistributedDataParallel;
what involves the other processes goes through `self.ranks` (see distributed.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import torch
from torch import nn

from cnnlab.clock import seconds_since_start
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.splits import class_weights
from cnnlab.errors import CnnlabError
from cnnlab.reports.tensorboard import TensorBoardLog
from cnnlab.runs.config import TrainConfig, config_from, load_toml
from cnnlab.runs.folder import RunFolder
from cnnlab.train.batchnorm import frozen_norms
from cnnlab.train.checkpointing import Checkpointing
from cnnlab.train.distributed import current_ranks
from cnnlab.train.ema import WeightAverage
from cnnlab.train.epoch_end import EpochEnd
from cnnlab.train.evaluate import Evaluation, autocast, evaluate
from cnnlab.train.failures import (
    SKIP_LIMIT,
    NonFiniteStep,
    check_finite,
    memory_advice,
    memory_hint,
    non_finite_error,
    weights_finite,
)
from cnnlab.train.fast_path import settle
from cnnlab.train.metrics import RunningMetrics
from cnnlab.train.optim import build_optimizer, build_schedule, l1_penalty
from cnnlab.train.progress import EpochBar
from cnnlab.train.setup import (
    RunData,
    build_model,
    fit_to_run_data,
    load_run_data,
    pipelines,
    resolve_device,
)
from cnnlab.train.stopping import catch_stop_signals


class Trainer(Checkpointing, EpochEnd):
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
        self.ranks = current_ranks()  # a single process, or this one's place in a torchrun job
        self.echo = echo if self.ranks.is_main else lambda line: None  # rank 0 alone prints
        self.run = run
        self.data = data
        self.given_model = model
        self.final_evaluation: Evaluation | None = None
        self.resuming = run is not None
        self.history: list[dict] = []
        self.timeline: dict[str, float] = {}  # seconds from process start at each stage
        self.stop_signal: int | None = None
        self.signal_pending: int | None = None  # under torchrun, until every rank knows: agree
        self.stage = "setting up"  # or "training", then writing the final report
        self.skipped = 0  # the epoch's steps skipped as non-finite (nonfinite="skip")
        self.skipped_in_a_row = 0
        self.allow_mismatch = False  # resume a checkpoint of another model or data (see resume)
        self.rotate_last = True  # whether saving `last` keeps the file it replaces (see save)

    @classmethod
    def resume(
        cls, folder, echo=print, allow_mismatch: bool = False, quiet: bool | None = None
    ) -> Trainer:
        """Continue the run in `folder` with its config.toml. A checkpoint written for another
        model, class list or dataset than config.toml's is refused, unless `allow_mismatch`
        (then its weights must still fit the model). `quiet`, when given, replaces the run's
        setting for this invocation only: it changes what is printed, not the run."""
        run = RunFolder.existing(folder)
        if not any(path.is_file() for path in run.resume_candidates()):
            raise CnnlabError(f"{folder} has no checkpoint to resume from ({run.last} is missing)")
        if current_ranks().is_main:  # rank 0's folder: no other rank writes there
            run.remove_debris()
        config = config_from(load_toml(run.config_file))
        if quiet is not None:
            config = dataclasses.replace(config, quiet=quiet)
        trainer = cls(config, run=run, echo=echo)
        trainer.allow_mismatch = allow_mismatch
        return trainer

    # ---- setting up -------------------------------------------------------------------------

    def setup(self, create_run: bool = True) -> None:
        """Data, model, loaders, optimiser, schedule and loss; and the run folder, unless
        `create_run` is False (the learning-rate finder trains without one)."""
        config = self.config
        self.mark("setup_started")
        # first: a missing tensorboard package stops the run before data or run folder exist
        self.tensorboard = TensorBoardLog(
            enabled=config.tensorboard and create_run and self.ranks.is_main
        )
        torch.manual_seed(config.seed)
        # process-wide: set either way, so that an earlier deterministic run does not leak; only
        # on a change, because the call imports torch's compiler stack (2 s on a 2-core CPU)
        if torch.are_deterministic_algorithms_enabled() != config.deterministic:
            torch.use_deterministic_algorithms(config.deterministic)
        self.ranks = current_ranks(resolve_device(config.device))
        self.device = self.ranks.device  # under torchrun on CUDA, this process's own GPU
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
            progress = not config.quiet and self.ranks.is_main
            self.data = self.ranks.main_first(lambda: load_run_data(config, progress=progress))
        self.mark("data_loaded")
        config = self.config = fit_to_run_data(config, self.data, self.device, self.echo)
        in_channels = self.data.train.image_size[0]
        self.num_classes = len(self.data.classes)
        model = self.given_model or build_model(config, self.num_classes, in_channels)
        self.model = model.to(self.device)
        train_pipeline, self.eval_pipeline = pipelines(config, self.data)
        self.ranks.check_batches(config.batch_size, len(self.data.train))
        self.train_loader = InMemoryLoader(
            self.data.train.images,
            self.data.train.labels,
            config.batch_size,
            seed=config.seed,
            device=self.device,
            pipeline=train_pipeline,
            shard=self.ranks.shard,
        )
        weights = None
        if config.class_weights:
            weights = class_weights(self.data.train.labels, self.num_classes).to(self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
        with self.memory_hint("timing training steps", config.batch_size):
            config = self.config = self.ranks.from_main(  # every rank takes rank 0's choice
                lambda: settle(
                    config,
                    self.model,
                    self.train_loader,
                    self.criterion,
                    self.device,
                    self.echo,
                    planned_steps=config.epochs * len(self.train_loader),
                )
            )
        self.mark("step_chosen")
        self.channels_last = config.memory_format == "channels_last"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model, parallel = self.ranks.parallel(self.model, config.sync_bn)
        self.forward = torch.compile(parallel) if config.compile else parallel
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
            self.run = self.ranks.from_main(lambda: RunFolder.start(config))
        self.mark("training_started")

    def eval_batches(self, data):
        loader = InMemoryLoader(
            data.images,
            data.labels,
            2 * self.config.batch_size,
            shuffle=False,
            device=self.device,
            pipeline=self.eval_pipeline,
            shard=self.ranks.shard,
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
        """Train for the configured epochs (or until early stopping); return the history.
        A stop signal while setting up or writing the final report ends the run at once (see
        ask_to_stop); during the epochs it ends it at the next step boundary."""
        with catch_stop_signals(self.ask_to_stop):
            self.stage = "setting up"
            self.setup()
            position = self.restore() if self.resuming else {"epoch": 0, "next_batch": 0}
            self.ranks.reseed(self.config.seed, position["epoch"], position["next_batch"])
            self.tensorboard.start(self, position)
            self.stage = "training"
            # a resumed run whose epochs already ended it (stopped between that decision and
            # the final report) goes straight to the report, as the uninterrupted run did
            first = self.config.epochs if self.ended() else position["epoch"]
            epoch = first
            while epoch < self.config.epochs:  # read each time: a budget run re-plans it
                record = self.train_epoch(epoch, position.get("next_batch", 0), position)
                position = {"epoch": epoch + 1, "next_batch": 0}
                self.end_epoch(epoch, record)
                self.agree()  # a signal after the epoch's last step, on any rank
                if self.stop_signal is not None or self.ended():
                    break
                epoch += 1
            if self.stop_signal is not None:  # arrived after an epoch's last step
                raise self.stopped(f"after epoch {len(self.history)}")
            self.stage = "writing the final evaluation and report"
            self.mark("training_finished")
            self.finish()
        return self.history

    def train_epoch(self, epoch: int, start: int, position: dict) -> dict:
        config, loader = self.config, self.train_loader
        self.model.train()
        for norm in frozen_norms(self.model):
            norm.eval()
        metrics = RunningMetrics()
        if start and self.ranks.is_main:  # the sums of every rank before the interruption
            metrics.load_state(position["metrics"], self.device)
        # a resumed epoch counts on from the clipped and skipped steps before the interruption
        clipped = torch.tensor(position.get("clipped", 0) if start else 0, device=self.device)
        self.skipped = position.get("skipped", 0) if start else 0
        shown = not config.quiet and self.ranks.is_main
        bar = EpochBar(epoch + 1, config.epochs, len(loader), enabled=shown)
        started, seen = time.perf_counter(), 0
        batches = loader.epoch_batches(epoch, start, position.get("augment_state"))
        with self.memory_hint(f"training (epoch {epoch + 1})", config.batch_size):
            for index, (images, labels) in enumerate(batches, start=start):
                whole = loader.global_size(index)  # this rank's labels are part of it
                try:
                    share = len(labels) * self.ranks.world_size / whole
                    loss, logits = self.step(images, labels, clipped, share)
                    metrics.update(loss * len(labels), logits, labels)
                    self.skipped_in_a_row = 0
                except NonFiniteStep as problem:
                    self.skip_or_stop(problem.what, epoch, index)
                seen += whole
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
        metrics.sum_across(self.ranks.total, self.device)
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

    def step(self, images, labels, clipped: torch.Tensor, share: float = 1.0):
        """One optimisation step; the loss and logits, detached. A NaN or infinite loss or
        gradient raises NonFiniteStep before the weights, optimiser or schedule change. `share`
        weights an uneven part of a global batch (see distributed.py)."""
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
        self.scaler.scale(loss if share == 1 else loss * share).backward()
        self.tensorboard.after_backward(loss)  # before check_finite: skipped steps count too
        self.check_step(loss)
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

    def check_step(self, loss: torch.Tensor) -> None:
        """check_finite, agreed under torchrun: all ranks apply, skip or stop the same step."""
        problem = None
        try:
            check_finite(loss, self.optimizer, self.scaler)
        except NonFiniteStep as refused:
            problem = refused.what
        if problem := self.agree(problem):
            raise NonFiniteStep(problem)

    def agree(self, problem: str | None = None) -> str | None:
        """This rank's step verdict and pending stop signal made every rank's (one collective;
        a single process keeps its own): a signal anywhere becomes stop_signal everywhere."""
        problem, signum = self.ranks.agree(problem, self.signal_pending)
        self.stop_signal = self.stop_signal or signum
        return problem

    def mark(self, stage: str) -> None:
        """Record when `stage` was reached, in seconds from process start."""
        self.timeline[stage] = round(seconds_since_start(), 3)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

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
        return self.ranks.everywhere(weights_finite(self.model))

    def stop_non_finite(self, what: str, option: str = "") -> None:
        raise non_finite_error(what, self.run.last if self.run is not None else None, option)

    def memory_hint(self, doing: str, batch_size: int):
        """Running out of memory in the block names `doing`, the batch size and what to try."""
        return memory_hint(
            lambda: memory_advice(self.config, self.model, self.device, doing, batch_size)
        )

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
                total=self.ranks.total,
            )

    def finish(self) -> None:
        from cnnlab.train.report import write_final_report

        final_set = self.data.test if self.data.test is not None else self.data.val
        evaluation = self.evaluate(final_set) if final_set is not None else None
        self.final_evaluation = evaluation
        self.mark("evaluated")
        if self.ranks.is_main:
            write_final_report(self, final_set, evaluation)
        self.tensorboard.close()
