"""Training: the loop (trainer.py) and what a step needs (set-up, optimisers and schedules,
metrics, evaluation, BatchNorm statistics, weight averaging, the fast path, failures, signals,
distributed training). A run's configuration and files are cnnlab.runs'; reports on runs are
cnnlab.reports'."""

from cnnlab.runs.config import TrainConfig, config_from
from cnnlab.train.stopping import Interrupted
from cnnlab.train.trainer import Trainer

__all__ = ["Interrupted", "TrainConfig", "Trainer", "config_from", "train"]


def train(**settings) -> list[dict]:
    """Train with the given TrainConfig settings (e.g. model="lenet_bn", epochs=5, or
    recipe="fast" and overrides); returns the history, one dict per epoch. For the model and
    the run folder, use Trainer directly."""
    trainer = Trainer(config_from(settings))
    return trainer.fit()
