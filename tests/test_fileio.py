"""Atomic writes: whole or nothing, never temp debris, clear errors naming the path."""

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_path, atomic_write_bytes


def test_write_replaces_whole(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_failure_keeps_previous_and_leaves_no_temp(tmp_path):
    target = tmp_path / "result.json"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CnnlabError, match=r"folder .*nowhere does not exist"):
        atomic_write_bytes(tmp_path / "nowhere" / "x.bin", b"")


def test_files_get_the_usual_permissions(tmp_path):
    import os

    target = tmp_path / "result.json"
    atomic_write_bytes(target, b"{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
