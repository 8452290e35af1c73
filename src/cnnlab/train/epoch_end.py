"""The end of each epoch: precise BatchNorm statistics, validation, the metrics file, the best
epoch, checkpoints, and the rules that end a run early (a target accuracy reached, early
stopping out of patience). `EpochEnd` is mixed into `Trainer` (trainer.py), whose attributes it
uses, as `Checkpointing` (checkpointing.py) is.
"""

from __future__ import annotations

import itertools

from cnnlab.clock import seconds_since_start
from cnnlab.data.loader import InMemoryLoader
from cnnlab.runs.checkpoint import load_checkpoint
from cnnlab.train.batchnorm import recompute_batchnorm
from cnnlab.train.progress import epoch_line


class EpochEnd:
    def end_epoch(self, epoch: int, record: dict) -> None:
        self.recompute_batchnorm(epoch)
        self.ranks.broadcast_buffers(self.eval_model)  # rank 0's statistics, which it saves
        val = self.evaluate(self.data.val) if self.data.val is not None else None
        record["val_loss"] = val.loss if val else None
        record["val_acc"] = val.acc if val else None
        target = self.config.target_acc
        if target is not None and val.acc >= target:
            record["time_to_target_s"] = round(seconds_since_start(), 3)
        self.history.append(record)
        if self.ranks.is_main:
            self.run.write_metrics(self.history)
        self.tensorboard.end_epoch(record)
        improved = self.track_best(record)
        state = self.state(epoch + 1, 0)
        self.save(self.run.last, state)
        if improved:
            self.save(self.run.best, state)
        self.echo(epoch_line(record, self.config.epochs))

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
            # synchronised statistics from the ranks' parts; else every rank's from the whole
            shard=self.ranks.shard if self.config.sync_bn else (0, 1),
        )
        batches = itertools.islice(self.formatted(loader), self.config.precise_bn)
        with self.memory_hint("recomputing BatchNorm statistics", self.config.batch_size):
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
            if self.ranks.is_main:  # and the others get the weights from it
                load_checkpoint(self.run.best, self.model, extra_models=self.extras())
            self.ranks.broadcast_state(self.model, *self.extras().values())
            return True
        return False

    def should_stop_early(self) -> bool:
        patience = self.config.early_stopping
        return bool(patience) and self.history[-1]["epoch"] - self.best["epoch"] >= patience
