"""Fixtures shared by the reliability tests: the real training run that the weight-file tests
make bad files from, and the scratch folder of a fuzz test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from weight_file_inputs import trained_workspace


@pytest.fixture(scope="module")
def workspace(shared_data, tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run and what goes with it (see `trained_workspace`), trained
    once per session."""
    return trained_workspace(shared_data, tmp_path_factory)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch folder reused by every example of one fuzz test (examples overwrite its files),
    removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
