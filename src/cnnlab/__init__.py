"""cnnlab: train, dissect and understand the classic convolutional networks."""

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, register_model
from cnnlab.runs.weights import load_model
from cnnlab.train import TrainConfig, Trainer, train
from cnnlab.version import __version__

__all__ = [
    "CnnlabError",
    "TrainConfig",
    "Trainer",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
    "train",
]
