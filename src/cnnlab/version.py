"""cnnlab's version, in a module of its own so that any module can read it without importing
the package's public API (and, through it, the training code)."""

__version__ = "0.1.0"
