"""The model zoo: one module per family, every builder registered by name."""

from cnnlab.models import (  # noqa: F401  (importing a family registers its builders)
    alexnet,
    densenet,
    fastnet,
    googlenet,
    inception_resnet,
    inception_v2,
    inception_v3,
    inception_v4,
    lenet,
    nin,
    resnet,
    vgg,
)
from cnnlab.models.base import ClassifierModel, DefaultCfg
from cnnlab.models.registry import create_model, list_models, model_options, register_model

__all__ = [
    "ClassifierModel",
    "DefaultCfg",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
]
