"""cnnlab: train, dissect and understand the classic convolutional networks."""

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = ["CnnlabError", "__version__", "create_model", "list_models", "register_model"]
