"""cnnlab: train, dissect and understand the classic convolutional networks."""

__version__ = "0.1.0"  # before the imports: submodules read it

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, register_model
from cnnlab.runs.weights import load_model
from cnnlab.train import TrainConfig, Trainer, train

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
