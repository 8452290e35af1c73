"""User-facing errors: each one says what was expected and what was found.

The CLI prints a `CnnlabError` as one line and exits non-zero; anything else is a bug.
"""


class CnnlabError(Exception):
    """Base class of every error cnnlab reports to its user."""


class UnknownModelError(CnnlabError, ValueError):
    """A model name or a model option that the registry does not know."""


class InputShapeError(CnnlabError, ValueError):
    """An input tensor whose shape a model or layer cannot take."""
