"""Training: the trainer, optimisers and schedules, checkpoints, metrics."""

from cnnlab.train.config import TrainConfig
from cnnlab.train.trainer import Interrupted, Trainer

__all__ = ["Interrupted", "TrainConfig", "Trainer", "train"]


def train(**settings) -> list[dict]:
    """Train with the given TrainConfig settings (e.g. model="lenet_bn", epochs=5); returns the
    history, one dict per epoch. For the model and the run folder, use Trainer directly."""
    trainer = Trainer(TrainConfig(**settings))
    return trainer.fit()
