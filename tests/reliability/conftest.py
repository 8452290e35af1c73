"""Fixtures shared by the reliability tests: the real training run that the weight-file tests
make bad files from, the scratch folder of a fuzz test, and one torch thread for in-process
training."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
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


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One math thread for tiny in-process runs: two threads on two busy cores spin more than
    they compute. The previous count is put back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
