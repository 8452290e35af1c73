"""Put a dataset's files on disk: check what is there, download what is missing, verify it.

`ensure_files(spec, root)` returns the dataset folder `root / spec.folder` once every file its
splits read is present. Missing files are fetched from the URLs of the spec (official first, then
mirrors) with `urllib.request`, and every download is

- streamed into a temp file (`.<name>.<random>.part`) in the target folder, hashed as it arrives;
- refused unless it has the Content-Length the server announced and the published MD5;
- flushed to disk (fsync) and only then renamed to its final name, so a file under a final name
  is always complete and verified. On any failure the temp file is removed.

Archives (the CIFAR binary tarballs, `*.tar.gz`) are downloaded the same way into the root, then
extracted with two guards: our own check that every member is a regular file or a directory with
a relative path free of `..` that stays under the root (no links, no devices), and tarfile's
"data" extraction filter (PEP 706) where the Python has it. Extraction goes into a temp folder in
the root and the dataset folder is renamed into place, so a half-extracted folder never appears
under the final name; the tarball is removed afterwards.

When files are missing and cannot be downloaded (download=False, offline, every URL failed) the
error lists the missing and the present files, the folder, each URL tried with its reason, and
how to place the files by hand. It is a `DownloadError` when a server delivered wrong or
truncated bytes, a `MissingDataError` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TextIO
from urllib.parse import urlsplit

from cnnlab.data.catalog import DatasetSpec, RemoteFile
from cnnlab.errors import DownloadError, MissingDataError

TIMEOUT_S = 30.0  # per connection attempt and per blocking read
CHUNK_BYTES = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
USER_AGENT = "cnnlab (dataset download)"


def ensure_files(
    spec: DatasetSpec, root: Path, download: bool = True, progress: bool = True
) -> Path:
    """The folder `root / spec.folder`, after downloading whatever files its splits lack."""
    root = Path(root)
    folder = root / spec.folder
    missing = missing_files(spec, root)
    if not missing:
        return folder
    if not download:
        raise MissingDataError(_report(spec, root, missing, "downloading is off (download=False)"))
    made = [path for path in (folder, root) if not path.exists()]
    stream = sys.stderr if progress and sys.stderr and sys.stderr.isatty() else None
    failures: list[str] = []
    bad_bytes = False
    for remote in _downloads_for(spec, missing):
        try:
            _fetch(remote, spec, root, stream)
        except _FetchFailed as failed:
            failures += failed.reasons
            bad_bytes = bad_bytes or failed.bad_bytes
    missing = missing_files(spec, root)
    if not missing:
        return folder
    for path in made:  # leave no empty folder behind either
        _remove_if_empty(path)
    tried = "tried " + "; ".join(failures) if failures else "no download in the spec provides them"
    raise (DownloadError if bad_bytes else MissingDataError)(_report(spec, root, missing, tried))


def needed_files(spec: DatasetSpec) -> list[str]:
    """Every file any split of `spec` reads, relative to its folder, in a stable order."""
    return list(dict.fromkeys(name for files in spec.splits.values() for name in files))


def missing_files(spec: DatasetSpec, root: Path) -> list[str]:
    """The needed files of `spec` that are not regular files under `root / spec.folder`."""
    folder = Path(root) / spec.folder
    return [name for name in needed_files(spec) if not (folder / name).is_file()]


# --- what to download -------------------------------------------------------------------------


def _is_archive(remote: RemoteFile) -> bool:
    return remote.name.endswith(ARCHIVE_SUFFIXES)


def _downloads_for(spec: DatasetSpec, missing: list[str]) -> list[RemoteFile]:
    """A plain file is fetched when it is itself missing; an archive provides the whole folder."""
    return [remote for remote in spec.downloads if _is_archive(remote) or remote.name in missing]


class _FetchFailed(Exception):
    """Every URL of one RemoteFile failed; `reasons` holds "URL (why)" for each."""

    def __init__(self, reasons: list[str], bad_bytes: bool):
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        self.bad_bytes = bad_bytes  # a server answered but with wrong or truncated content


def _fetch(remote: RemoteFile, spec: DatasetSpec, root: Path, stream: TextIO | None) -> None:
    if not _is_archive(remote):
        _download(remote, root / spec.folder, stream)
        return
    archive = _download(remote, root, stream)
    try:
        _extract(archive, root, spec.folder, needed_files(spec))
    finally:
        archive.unlink(missing_ok=True)


# --- downloading ------------------------------------------------------------------------------


def _download(remote: RemoteFile, target_dir: Path, stream: TextIO | None) -> Path:
    """Download `remote` into `target_dir`, trying its URLs in order; returns the final path."""
    target_dir.mkdir(parents=True, exist_ok=True)
    reasons: list[str] = []
    bad_bytes = False
    for url in remote.urls:
        if urlsplit(url).scheme not in ("http", "https"):
            reasons.append(f"{url} (not an http or https URL)")
            continue
        try:
            return _download_from(url, remote, target_dir / remote.name, stream)
        except DownloadError as error:
            reasons.append(f"{url} ({error})")
            bad_bytes = True
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts included
            reasons.append(f"{url} ({_reason(error)})")
    raise _FetchFailed(reasons, bad_bytes)


def _download_from(url: str, remote: RemoteFile, target: Path, stream: TextIO | None) -> Path:
    # A fresh opener per call so proxy settings are read from the environment at call time.
    opener = urllib.request.build_opener()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with opener.open(request, timeout=TIMEOUT_S) as response, _temp_file_beside(target) as part:
        total = _content_length(response)
        md5, size = _copy(response, part, ProgressBar(remote.name, total, stream))
        part.flush()
        os.fsync(part.fileno())
        part.close()
        _verify(remote, md5, size, total)
        os.replace(part.name, target)
    _fsync_dir(target.parent)
    return target


@contextlib.contextmanager
def _temp_file_beside(target: Path):
    """A `.part` temp file in the target's folder; gone afterwards unless renamed to `target`."""
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
    ) as part:
        try:
            yield part
        finally:  # on success it was renamed away; on any failure (^C too) it is removed here
            part.close()
            Path(part.name).unlink(missing_ok=True)


def _copy(response, out, bar: ProgressBar) -> tuple[str, int]:
    """Stream the response body into `out`; returns its MD5 (hex) and its size in bytes."""
    md5 = hashlib.md5(usedforsecurity=False)  # a published checksum, not a security measure
    size = 0
    while chunk := response.read(CHUNK_BYTES):
        md5.update(chunk)
        out.write(chunk)
        size += len(chunk)
        bar.update(size)
    bar.close(size)
    return md5.hexdigest(), size


def _verify(remote: RemoteFile, md5: str, size: int, total: int | None) -> None:
    if total is not None and size != total:
        raise DownloadError(
            f"incomplete download of {remote.name}: received {size} of the {total} bytes "
            "announced by Content-Length"
        )
    if md5 != remote.md5.lower():
        raise DownloadError(
            f"checksum mismatch for {remote.name}: expected MD5 {remote.md5.lower()}, "
            f"got {md5} ({size} bytes)"
        )


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; some systems (Windows, some network filesystems) cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        path.rmdir()


# --- progress ---------------------------------------------------------------------------------


def format_progress(label: str, done: int, total: int | None, seconds: float) -> str:
    """One progress line: `label: 1.2/3.4 MB  35%  2.0 MB/s` (no total: no percent)."""
    rate = done / 1e6 / seconds if seconds > 0 else 0.0
    if total:
        return (
            f"{label}: {done / 1e6:.1f}/{total / 1e6:.1f} MB "
            f"{100 * done / total:3.0f}% {rate:.1f} MB/s"
        )
    return f"{label}: {done / 1e6:.1f} MB {rate:.1f} MB/s"


class ProgressBar:
    """A progress line redrawn in place on `stream` (none: silent), at most every `interval` s."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None, interval=0.1):
        self.label, self.total, self.stream, self.interval = label, total, stream, interval
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.stream is not None and now - self.last >= self.interval:
            self.last = now
            self._draw(done, now)

    def close(self, done: int) -> None:
        if self.stream is not None:
            self._draw(done, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, done: int, now: float) -> None:
        line = format_progress(self.label, done, self.total, now - self.start)
        self.stream.write("\r" + line)
        self.stream.flush()


# --- extracting -------------------------------------------------------------------------------


def _extract(archive: Path, root: Path, folder_name: str, expected: list[str]) -> None:
    """Extract `archive` safely and move its `folder_name` folder into place under `root`."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder_name}.", suffix=".extract"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:  # every member is checked before anything is written
                    _check_member(archive, member, staging)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members, filter="data")
                else:  # Python without PEP 706: the checks above refuse what the filter would
                    tar.extractall(staging, members)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DownloadError(f"cannot extract {archive}: {error}") from error
        _move_into_place(archive, staging / folder_name, root / folder_name, expected)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo, dest: Path) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise DownloadError(
            f"refusing to extract {archive}: member {name!r} is a {_kind(member)}; "
            "expected only regular files and directories"
        )
    path = PurePosixPath(name)
    if path.is_absolute() or PureWindowsPath(name).anchor or ".." in path.parts:
        raise DownloadError(
            f"refusing to extract {archive}: member {name!r} has an absolute path or '..'; "
            "expected a relative path inside the archive's folder"
        )
    if not (dest / name).resolve().is_relative_to(dest.resolve()):
        raise DownloadError(f"refusing to extract {archive}: member {name!r} leads outside {dest}")


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.isdev():
        return "device or FIFO"
    return "special member"


def _move_into_place(archive: Path, extracted: Path, final: Path, expected: list[str]) -> None:
    lacking = [name for name in expected if not (extracted / name).is_file()]
    if lacking:
        raise DownloadError(
            f"{archive} does not contain the expected files {', '.join(lacking)} "
            f"in a folder {final.name}/"
        )
    files = sorted(path for path in extracted.rglob("*") if path.is_file())
    for path in files:  # on disk before the folder appears under its final name
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if not final.exists():
        os.replace(extracted, final)  # one rename: the folder appears complete or not at all
    else:  # a partial folder is there: add what it lacks, keep what it has
        for path in files:
            target = final / path.relative_to(extracted)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    _fsync_dir(final.parent)


# --- the error message ------------------------------------------------------------------------


def _report(spec: DatasetSpec, root: Path, missing: list[str], why: str) -> str:
    """Which files are missing (and present), where, why, and how to place them by hand."""
    folder = root / spec.folder
    needed = needed_files(spec)
    present = [name for name in needed if name not in missing]
    text = f"{spec.name}: {len(missing)} of {len(needed)} files missing in {folder}: "
    text += ", ".join(missing)
    if present:
        text += f" (present: {', '.join(present)})"
    elif not folder.is_dir():
        text += " (the folder does not exist)"
    return f"{text}; {why}; {_by_hand(spec, root, missing)}"


def _by_hand(spec: DatasetSpec, root: Path, missing: list[str]) -> str:
    folder = root / spec.folder
    remotes = _downloads_for(spec, missing)
    urls = ", ".join(remote.urls[0] for remote in remotes if remote.urls) or spec.url
    if any(_is_archive(remote) for remote in remotes):
        how = f"download {urls} and extract it in {root} so that {folder} holds the files"
    else:
        how = f"download {urls} and put the files in {folder}"
    return (
        f"to place them by hand, {how} (see {spec.url}), or set --data-dir / CNNLAB_DATA "
        f"to a folder that holds {spec.folder}/"
    )
