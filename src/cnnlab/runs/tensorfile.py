"""Safetensors files written atomically with a checksum, and read back without trusting them.

Every tensor file cnnlab writes (checkpoints and final weights) has one metadata entry, a JSON
object, and in it under ``sha256`` a SHA-256 digest of the file's tensors: names, dtypes,
shapes and bytes. (One entry, because safetensors writes several in no fixed order, and the
same weights should give the same bytes.) Reading recomputes the digest, so a file damaged
after it was written (a flipped bit on disk, a bad copy) is refused instead of silently giving
other weights; files without one (older ones, or written by other tools) are read as they are.

Before safetensors sees a file, reading checks that it is a regular file and that its header
length fits the file (and safetensors' own 100 MB header limit): an empty, truncated, foreign or
hostile file ends in one `CheckpointError` naming it, and a torch.save/pickle file is recognised
and refused, never unpickled. A write that fails (a full disk) names the file and the reason;
the file it was to replace is left as it was, and no temp file stays behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cnnlab.errors import CheckpointError
from cnnlab.fileio import atomic_path

CHECKSUM_FIELD = "sha256"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: a larger claim is corrupt or hostile
_ZIP_MAGIC = b"PK\x03\x04"  # what torch.save writes: a zip archive around a pickle
_PICKLE_MAGIC = b"\x80"  # a bare pickle (protocol 2 and later)
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports a failed write


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def write_tensor_file(
    path: Path,
    tensors: dict[str, torch.Tensor],
    key: str,
    document: dict,
    keep_previous: str | os.PathLike | None = None,
) -> None:
    """Write `tensors` to `path` atomically, with `document` and the checksum as JSON under the
    metadata entry `key`; with `keep_previous`, the file `path` held becomes that file just
    before it is replaced."""
    text = json.dumps({**document, CHECKSUM_FIELD: tensor_checksum(tensors)})
    metadata = {key: text}
    with atomic_path(path, keep_previous) as temp:
        try:
            save_file(tensors, temp, metadata=metadata)
        except SafetensorError as error:
            raise CheckpointError(f"could not write {path}: {_write_failure(error)}") from None


def read_tensor_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the string metadata of a safetensors file, checked."""
    check_header(path)
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a valid safetensors file: {error}") from None
    saved = [_checksum_in(text) for text in metadata.values()]
    if any(saved) and tensor_checksum(tensors) not in saved:
        raise CheckpointError(
            f"{path} is damaged: its tensors no longer match the SHA-256 checksum written with "
            "them (the file changed on disk or in a copy); nothing was loaded from it"
        )
    return tensors, metadata


def _checksum_in(text: str) -> str | None:
    """The checksum in a metadata entry that is a JSON object holding one; else None."""
    if CHECKSUM_FIELD not in text:  # most entries: no need to parse them
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None  # the reader of that entry reports it
    checksum = document.get(CHECKSUM_FIELD) if isinstance(document, dict) else None
    return checksum if isinstance(checksum, str) else None


def check_header(path: Path) -> None:
    """Refuse what safetensors should never be handed: a missing or short file, or a header
    length that the file cannot hold (truncation, another format, a hostile file)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a folder, or a pipe or device that could block
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise CheckpointError(f"{path} is {kind}; expected a .safetensors file")
        size = info.st_size
        with open(path, "rb") as file:
            head = file.read(8)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if size == 0:
        raise CheckpointError(f"{path} is empty, not a safetensors file")
    if size < 8:
        raise CheckpointError(
            f"{path} is not a safetensors file: {size} bytes, fewer than its 8-byte header length"
        )
    (length,) = struct.unpack("<Q", head)
    if length <= min(size - 8, MAX_HEADER_BYTES):
        return
    if head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path} is a torch.save/pickle file, not safetensors; cnnlab never unpickles a file "
            "because unpickling can run arbitrary code"
        )
    raise CheckpointError(
        f"{path} is not a valid safetensors file: its header claims {length} bytes but the file "
        f"holds {size} bytes (limit {MAX_HEADER_BYTES}); it is truncated or another format"
    )


def _write_failure(error: SafetensorError) -> str:
    """The reason a write failed in the operating system's words ("No space left on device"),
    plus what that leaves; safetensors' own text where it names no OS error."""
    found = _OS_ERROR.search(str(error))
    if found is None:
        return str(error)
    code = int(found.group(1))
    reason = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason += "; free some space or write the run elsewhere (--out)"
    return f"{reason}; the previous file, if any, is kept"
