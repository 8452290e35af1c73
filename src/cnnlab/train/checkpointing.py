"""How a run is saved, resumed and stopped: the part of the Trainer that deals with checkpoints.

The state a checkpoint holds (position, history, best epoch, the run's identity), the save
that keeps the replaced `last` as `previous`, the restore from the newest usable checkpoint
(runs/resume.py), and the stop signals: during the epochs a signal stops the run at the next step
boundary with a checkpoint; while setting up or writing the final report it stops at once.
`Checkpointing` is mixed into `Trainer` (trainer.py), whose attributes it uses.
"""

from __future__ import annotations

import signal

from cnnlab.runs.checkpoint import Checkpoint, save_checkpoint
from cnnlab.runs.resume import check_same_run, load_resumable, run_identity
from cnnlab.train.metrics import RunningMetrics
from cnnlab.train.stopping import Interrupted, notify


class Checkpointing:
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
        if not self.ranks.is_main:  # rank 0 alone writes the run folder
            return
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
        metrics.sum_across(self.ranks.total, self.device)  # rank 0 saves every rank's sums
        generators = {}
        if self.train_loader.augment_generator is not None:
            generators["augment"] = self.train_loader.augment_generator.get_state()
        self.save(self.run.last, self.state(epoch, next_batch, metrics, clipped), generators)
        raise self.stopped(f"at epoch {epoch + 1}, step {next_batch}")

    def stopped(self, where: str) -> Interrupted:
        """The stop by `self.stop_signal`, once checkpoints/last holds the state `where`."""
        name = signal.Signals(self.stop_signal).name
        self.tensorboard.close()
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
            if self.ranks.is_main:  # rank 0's stream; the others restart theirs
                position["augment_state"] = checkpoint.generators.get("augment")
        source = "" if self.resumed_from == self.run.last else f" from {self.resumed_from.name}"
        self.echo(
            f"resuming {self.run.path} at epoch {state['epoch'] + 1}, step {state['next_batch']}"
            + source
        )
        return position

    def load_resumable(self) -> Checkpoint:
        """Restore from the run's newest usable checkpoint (see runs/resume.py)."""
        checkpoint, self.resumed_from = load_resumable(
            self.run,
            self.model,
            self.optimizer,
            self.scheduler,
            self.extras(),
            check_state=self.check_same_run,
        )
        # an unusable `last` is replaced by the next save, never kept as `previous`
        self.rotate_last = self.resumed_from == self.run.last
        return checkpoint

    def identity(self) -> dict:
        return run_identity(self.config, self.data)

    def check_same_run(self, path, state) -> None:
        check_same_run(self.run, self.identity(), path, state, self.allow_mismatch, self.echo)

    def ask_to_stop(self, signum: int) -> None:
        """The signal handler. During the epochs the loop stops at the next step boundary; the
        first signal decides the exit code, and more (an impatient second Ctrl-C) change
        nothing, so they cannot break off the checkpoint being written. Setting up or writing
        the final report, the run stops at once: no checkpoint is being written then (every
        file is written atomically), and the last one stays the place to resume from."""
        if self.stop_signal is not None or self.signal_pending is not None:
            if self.ranks.is_main:
                notify("already stopping: the checkpoint is being written, please wait...\n")
            return
        training = self.stage == "training"
        if training and self.ranks.distributed:
            self.signal_pending = signum  # every rank stops at the same step: see agree
        else:
            self.stop_signal = signum
        if training:
            if self.ranks.is_main:
                notify("\nstopping after this step, writing a checkpoint...\n")
            return
        raise self.stopped_outside_epochs()

    def stopped_outside_epochs(self) -> Interrupted:
        name, run = signal.Signals(self.stop_signal).name, self.run
        if run is None:
            outcome = "before the run folder was created; nothing to resume"
        elif not any(path.is_file() for path in run.resume_candidates()):
            outcome = (
                f"{run.path} has no checkpoint yet, nothing to resume: remove it or choose "
                f"another --out to start again"
            )
        else:
            outcome = (
                f"the checkpoints in {run.path / 'checkpoints'} are whole; continue with: "
                f"cnnlab train --resume {run.path}"
            )
        return Interrupted(f"{name}: stopped while {self.stage}; {outcome}", 128 + self.stop_signal)
