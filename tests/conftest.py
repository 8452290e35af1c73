"""Shared test settings and fixtures: a small thread count so the suite behaves the same on any
machine, one thread for the folders that train in-process, and a tiny fake Fashion-MNIST
written as IDX gzip files."""

import atexit
import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

# Under pytest-xdist (the README's test command) every worker is a process of its own: one math
# thread each, so that the workers share the cores instead of contending for them. NumPy's
# OpenBLAS reads its thread count when it loads, so this comes before the imports; its threads
# spin while they wait, and two workers of two threads each on two cores ran the NumPy LeNet
# test 4x slower than one thread each.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Decoded image folders and step-time decisions are cached per user (cnnlab.data.decode_cache):
# the tests get a cache of their own, emptied when they end, never the user's ~/.cache/cnnlab.
TEST_CACHE = tempfile.mkdtemp(prefix="cnnlab-test-cache-")
os.environ["CNNLAB_CACHE"] = TEST_CACHE
atexit.register(shutil.rmtree, TEST_CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if WORKER else min(2, torch.get_num_threads()))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fake_fashion_mnist(root: Path, train: int = 120, test: int = 40) -> Path:
    """28x28 images whose brightness depends on the class (so there is something to learn),
    labels balanced over the 10 classes; returns the data root to give as data_dir."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        noise = rng.integers(0, 100, (count, 28, 28))
        images = noise + 15 * labels[:, None, None]
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """The data root (pass as data_dir) of a fake Fashion-MNIST: 120 train, 40 test images."""
    return write_fake_fashion_mnist(tmp_path / "data")


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    """The same fake Fashion-MNIST, written once for a whole test module."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("shared") / "data")


# Folders whose tests train tiny models in-process: one math thread is steadier and faster there
# (two threads on two busy cores spin more than they compute).
ONE_THREAD_FOLDERS = {"train", "runs", "reports", "studies"}


@pytest.fixture(autouse=True)
def one_thread_and_global_flags(request):
    """One thread in those folders; the process-wide settings a deterministic run changes are
    put back."""
    folders = set(request.node.path.relative_to(Path(__file__).parent).parts[:-1])
    if not ONE_THREAD_FOLDERS & folders:
        yield
        return
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
