"""Settings for the training tests: one thread, and global torch flags restored."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread_and_global_flags():
    """One thread (steadier timing on a busy 2-core machine); the process-wide settings a
    deterministic run changes are put back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
