"""Atomic file writes: a result either appears whole under its final name or not at all.

The content goes to a temp file in the same directory (so the rename cannot cross filesystems),
is flushed and fsynced, renamed over the final name, and the directory is fsynced so the rename
itself survives a crash. On any failure the temp file is removed and the error names the path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnlab.errors import CnnlabError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; results get the usual permissions.
FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block succeeds it becomes `path`."""
    target = Path(path)
    if not target.parent.is_dir():
        raise CnnlabError(f"cannot write {target}: folder {target.parent} does not exist")
    handle, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    except OSError as error:
        raise CnnlabError(f"could not write {target}: {error.strerror or error}") from None
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
