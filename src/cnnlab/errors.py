"""User-facing errors: each one says what was expected and what was found.

The CLI prints a `CnnlabError` as one line and exits non-zero; anything else is a bug.
"""


class CnnlabError(Exception):
    """Base class of every error cnnlab reports to its user."""


class UnknownModelError(CnnlabError, ValueError):
    """A model name or a model option that the registry does not know."""


class InputShapeError(CnnlabError, ValueError):
    """An input tensor whose shape a model or layer cannot take."""


class DataError(CnnlabError):
    """A dataset that cannot be used: missing, unreadable, or not what its format promises."""


class DataFormatError(DataError):
    """A data file whose content breaks its format (names the file, expected and found)."""


class MissingDataError(DataError):
    """Dataset files that are not on disk and could not be downloaded."""


class DownloadError(DataError):
    """A download that failed or delivered the wrong bytes; nothing is left behind."""


class CheckpointError(CnnlabError):
    """A checkpoint or weights file that cannot be written or read back (names the file)."""


class NonFiniteError(CnnlabError):
    """Training produced a NaN or infinite loss, gradient or weight (names the epoch and step)."""


class OutOfMemory(CnnlabError):
    """Training or evaluation ran out of device or host memory (names the batch size that
    failed and what to try)."""
