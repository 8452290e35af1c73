"""The model registry: every builder is registered by name and built through `create_model`.

A builder is a function `name(num_classes=1000, in_channels=3, **options) -> ClassifierModel`.
Unknown names and unknown options are refused with the close matches, so a typo never turns
into a silently different network.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

from cnnlab.errors import UnknownModelError

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Register `builder` under its function name; use as a decorator."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; `pattern` is a shell-style filter such as 'resnet*'."""
    names = sorted(_BUILDERS)
    if pattern is None:
        return names
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def model_options(name: str) -> dict[str, object]:
    """The build options a model accepts beside num_classes and in_channels, with their defaults."""
    params = inspect.signature(_builder(name)).parameters
    return {
        key: param.default
        for key, param in params.items()
        if key not in ("num_classes", "in_channels") and param.kind is param.KEYWORD_ONLY
    }


def create_model(name: str, num_classes: int = 1000, in_channels: int = 3, **options) -> nn.Module:
    """Build the registered model `name`.

    `num_classes=0` builds the network without a classifier: it returns pooled features.
    """
    builder = _builder(name)
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, accepted, n=3)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        listed = ", ".join(accepted) if accepted else "none"
        raise UnknownModelError(
            f"model {name!r} has no option {'; '.join(hints)}; its options are: {listed}"
        )
    if not isinstance(num_classes, int) or num_classes < 0:
        raise UnknownModelError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UnknownModelError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    return builder(num_classes=num_classes, in_channels=in_channels, **options)


def _builder(name: str) -> ModelBuilder:
    if name in _BUILDERS:
        return _BUILDERS[name]
    close = difflib.get_close_matches(name, _BUILDERS, n=5, cutoff=0.5)
    if not close:
        close = [known for known in sorted(_BUILDERS) if known.startswith(name[:3])][:5]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (`cnnlab zoo` lists all {len(_BUILDERS)} models)"
    )
