"""Training: the trainer, optimisers and schedules, checkpoints, metrics."""

from cnnlab.train.config import TrainConfig, config_from
from cnnlab.train.stopping import Interrupted
from cnnlab.train.trainer import Trainer

__all__ = ["Interrupted", "TrainConfig", "Trainer", "train"]


def train(**settings) -> list[dict]:
    """Train with the given TrainConfig settings (e.g. model="lenet_bn", epochs=5, or
    recipe="fast" and overrides); returns the history, one dict per epoch. For the model and
    the run folder, use Trainer directly."""
    trainer = Trainer(config_from(settings))
    return trainer.fit()
