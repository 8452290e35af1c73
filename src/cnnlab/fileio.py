"""Atomic file writes: a result either appears whole under its final name or not at all.

The content goes to a temp file in the same directory (so the rename cannot cross filesystems),
is flushed and fsynced, renamed over the final name with `os.replace` (so the final name never
disappears, not even for an instant: readers see the old file or the new one), and the directory
is fsynced so the rename itself survives a crash. On any failure the temp file is removed and the
error names the final path.

Temp files are named ``.<name>.<pid>.<random>.tmp``. One whose writer was killed (SIGKILL, power
loss) is debris: nothing cnnlab reads ever opens a temp name, and `remove_stale_temps` deletes
those whose writing process is no longer running. Every successful atomic write does so for its
own target, and a resumed training run for its whole run folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnlab.errors import CnnlabError

TEMP_SUFFIX = ".tmp"
# ".<name>.<pid>.<random>.tmp", the random part drawn by tempfile from [a-z0-9_]
_TEMP_TAIL = re.compile(r"(?P<pid>\d+)\.[a-z0-9_]+\.tmp")
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\." + _TEMP_TAIL.pattern)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; results get the usual permissions.
FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, keep_previous: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block succeeds it becomes `path`.

    With `keep_previous`, the file `path` held until now (if any) becomes `keep_previous` (a
    hard link, or a copy where the filesystem has none) once the new content is safely on disk
    and before it replaces `path`: a crash at any moment leaves `path` whole, and a failed write
    leaves both files as they were."""
    target = Path(path)
    if not target.parent.is_dir():
        raise CnnlabError(f"cannot write {target}: folder {target.parent} does not exist")
    try:
        handle, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=TEMP_SUFFIX
        )
    except OSError as error:
        raise CnnlabError(f"could not write {target}: {error.strerror or error}") from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:  # the block's writer flushed and closed it
            os.fsync(written.fileno())
        os.chmod(temp, FILE_MODE)
        if keep_previous is not None and target.is_file():
            copy_atomically(target, keep_previous)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    except OSError as error:
        raise CnnlabError(f"could not write {target}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
    remove_stale_temps(target.parent, target.name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def copy_atomically(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make `target` a second name of `source` (a hard link), or a copy of it where the
    filesystem has no hard links; atomically, like every write here."""
    with atomic_path(target) as temp:
        temp.unlink()
        try:
            os.link(source, temp)
        except OSError:  # no hard links here (FAT, some network filesystems); or no source
            shutil.copyfile(source, temp)


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temp files in `folder` (of the target `name` only, if given) whose writing
    process is no longer running; return them. Best effort: what cannot be listed or deleted
    stays, and is ignored by every reader anyway."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = _temp_writer(entry.name, name)
        if pid is None or _running(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _temp_writer(filename: str, name: str | None) -> int | None:
    """The process id in a temp file's name, or None if `filename` is not a temp file (of the
    target `name`, if given)."""
    if name is None:
        match = _TEMP_NAME.fullmatch(filename)
    else:
        prefix = f".{name}."
        match = filename.startswith(prefix) and _TEMP_TAIL.fullmatch(filename[len(prefix) :])
    return int(match["pid"]) if match else None


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to another user
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
