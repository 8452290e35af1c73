"""Fuzzing the readers of untrusted dataset files: IDX (Fashion-MNIST) and CIFAR binary.

Every input is a real file on disk, made by Hypothesis from a valid seed (bit flips, truncation,
header fields set to extremes, count mismatches, wrong magic or type codes, corrupt gzip) or
from scratch, and read through the public entry points (`load_dataset`, `read_idx`,
`read_cifar100`). The only acceptable failure is a DataError naming the file; a read that
succeeds must return well-formed data. Each test runs under an address-space cap
(`fuzz_inputs.memory_cap`: a reader that tries a large allocation fails; the first test proves
the cap is real) and each read under an alarm (a hang fails). Hypothesis is derandomized and
has no example database, so CI tries the same inputs every time; each test asserts how many it
tried and prints the tally (run with -s to see it). Crashes found are pinned as named regression
tests in test_fuzz_regressions.py.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_inputs import (
    EXTREME_U8,
    EXTREME_U32,
    HEADROOM,
    Field,
    Tally,
    fuzz_settings,
    memory_cap,
    mutated,
    random_bytes,
    run_fuzz,
    verdict,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

from cnnlab.data import load_dataset
from cnnlab.data.cifar import read_cifar100
from cnnlab.data.idx import TYPES, read_idx

# Examples per test, sized so that the whole file runs in well under 20 s on 2 idle cores.
EXAMPLES = {"idx": 900, "cifar": 300}


def test_memory_cap_turns_a_huge_allocation_into_a_failure():
    """The cap under which the fuzz runs is real: allocating past it fails (Linux)."""
    with memory_cap() as memory:
        if memory.cap is None:
            pytest.skip("RLIMIT_AS cannot be measured here (no /proc)")
        with pytest.raises(MemoryError):
            np.empty(2 * HEADROOM, dtype=np.uint8)
        with pytest.raises(RuntimeError, match="alloc"):
            torch.empty(2 * HEADROOM, dtype=torch.uint8)
    np.empty(2 * HEADROOM, dtype=np.uint8)  # and it is lifted afterwards


# ---- IDX -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(TYPES[code][1]).tobytes()


IDX_IMAGES = idx_bytes(np.arange(60).reshape(3, 4, 5) % 256)
IDX_LABELS = idx_bytes(np.array([0, 9, 3]))
IDX_SEEDS = (
    IDX_IMAGES,
    IDX_LABELS,
    idx_bytes(np.arange(40).reshape(2, 4, 5)),  # fewer images than labels: a count mismatch
    idx_bytes(np.array([1, 2, 3, 4])),  # more labels than images
    idx_bytes(np.linspace(-1, 1, 6).reshape(2, 3), 0x0D),
    idx_bytes(np.arange(-3, 3), 0x0B),
)
IDX_FIELDS = (
    Field(2, ">B", (0x00, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0xFF)),
    Field(3, ">B", (0, 1, 2, 3, 4, 32, 33, 63, 64, 65, 255)),
    *(Field(4 + 4 * index, ">I", EXTREME_U32) for index in range(3)),
)
GZIP_FIELDS = (Field(3, ">B", (0, 1, 2, 4, 8, 16, 31, 224, 255)), Field(2, ">B", (0, 7, 8, 255)))


@st.composite
def idx_headers(draw) -> bytes:
    """A header built field by field (extreme type codes, dimension counts and sizes), then as
    much data as it declares, give or take a few bytes."""
    magic = draw(st.sampled_from([b"\0\0", b"\0\1", b"\xff\0"]))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]))
    ndim = draw(st.sampled_from([0, 1, 2, 3, 4, 32, 33, 64, 65, 255]))
    size = st.one_of(st.integers(0, 4), st.integers(1, 4), st.sampled_from(EXTREME_U32))
    dims = [draw(size) if index < 4 else 1 for index in range(ndim)]
    header = magic + bytes([code, ndim]) + struct.pack(f">{ndim}I", *dims)
    expected = int(np.prod(dims, dtype=object)) * TYPES.get(code, ("", np.dtype("u1")))[1].itemsize
    length = max(0, min(expected, 512) + draw(st.just(0) | st.integers(-3, 3)))
    return header + draw(st.binary(min_size=length, max_size=length))


@st.composite
def idx_files(draw) -> bytes:
    seed = draw(st.sampled_from(IDX_SEEDS))
    kind = draw(st.sampled_from(["raw", "gzip then damage", "damage then gzip", "built", "random"]))
    if kind == "raw":
        return draw(mutated(seed, IDX_FIELDS))
    if kind == "damage then gzip":
        return gzip.compress(draw(mutated(seed, IDX_FIELDS)), mtime=0)
    if kind == "gzip then damage":
        return draw(mutated(gzip.compress(seed, mtime=0), GZIP_FIELDS, hot=24))
    if kind == "built":
        built = draw(idx_headers())
        return gzip.compress(built, mtime=0) if draw(st.booleans()) else built
    return draw(random_bytes(b"\0\0\x08\x03", b"\0\0\x08\x01", b"\x1f\x8b\x08\x00"))


def test_idx_reader_fuzz(workdir, record_property):
    """Fashion-MNIST's train images or labels replaced by a hostile file: `load_dataset` and the
    generic `read_idx` refuse it with a DataError naming it, or read well-formed data."""
    folder = workdir / "fashion-mnist"
    folder.mkdir()
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    write(folder / "t10k-images-idx3-ubyte.gz", IDX_IMAGES)  # the test split: only to be found
    write(folder / "t10k-labels-idx1-ubyte.gz", IDX_LABELS)
    tally = Tally("idx")

    @fuzz_settings(EXAMPLES["idx"])
    @given(content=idx_files(), replaced=st.sampled_from(names))
    def one(content, replaced):
        tally.tried += 1
        for name, seed in zip(names, (IDX_IMAGES, IDX_LABELS), strict=True):
            write(folder / name, content if name == replaced else seed)
        path = folder / replaced
        array = verdict(tally, "read_idx", lambda: read_idx(path), path)
        if array is not None:
            assert isinstance(array, np.ndarray) and array.dtype.isnative
        loaded = verdict(
            tally,
            "load_dataset",
            lambda: load_dataset("fashion-mnist", "train", workdir, False, False),
            path,
        )
        if loaded is not None:
            images, labels = loaded.images, loaded.labels
            assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 1
            assert min(images.shape) > 0 and labels.dtype == torch.int64
            assert len(labels) == len(images) and 0 <= labels.min() <= labels.max() < 10

    run_fuzz(tally, one, record_property, EXAMPLES[tally.name])


# ---- CIFAR -----------------------------------------------------------------------------------


def cifar_records(labels: list[tuple[int, ...]]) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return b"".join(bytes(label) + row.tobytes() for label, row in zip(labels, pixels, strict=True))


CIFAR10_BATCH = "cifar-10-batches-bin/test_batch.bin"
CIFAR100_TEST = "cifar-100-binary/test.bin"
CIFAR_SEEDS = {
    CIFAR10_BATCH: cifar_records([(3,), (9,)]),
    CIFAR100_TEST: cifar_records([(19, 99), (0, 5)]),
    "cifar-100-binary/fine_label_names.txt": "".join(f"fine{i}\n" for i in range(100)).encode(),
    "cifar-100-binary/coarse_label_names.txt": "".join(f"coarse{i}\n" for i in range(20)).encode(),
}
CIFAR_OTHER_FILES = (
    *(f"cifar-10-batches-bin/data_batch_{index}.bin" for index in range(1, 6)),
    "cifar-100-binary/train.bin",
)
CIFAR_FIELDS = {CIFAR10_BATCH: (0, 3073), CIFAR100_TEST: (0, 1, 3074, 3075)}  # label bytes


@st.composite
def cifar_files(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(CIFAR_SEEDS)))
    seed = CIFAR_SEEDS[name]
    fields = tuple(Field(at, ">B", EXTREME_U8) for at in CIFAR_FIELDS.get(name, ()))
    text = st.text(
        st.sampled_from("ab \t\r\n\x00\u00e9\u2028\ufeff"), max_size=300
    )  # \u2028 ends a line
    content = draw(
        mutated(seed, fields, hot=8) | random_bytes(b"\x03", b"\x13\x63") | text.map(str.encode)
    )
    return name, content


def test_cifar_reader_fuzz(workdir, record_property):
    """A CIFAR-10 batch, the CIFAR-100 test file or a class-name file replaced by a hostile
    one: loading refuses it with a DataError naming it, or returns well-formed data."""
    tally = Tally("cifar")
    for name in CIFAR_OTHER_FILES:  # what the other splits read: only there to be found
        (workdir / name).parent.mkdir(exist_ok=True)
        write(workdir / name, CIFAR_SEEDS[CIFAR10_BATCH if "10-" in name else CIFAR100_TEST])

    @fuzz_settings(EXAMPLES["cifar"])
    @given(case=cifar_files())
    def one(case):
        tally.tried += 1
        replaced, content = case
        for name, seed in CIFAR_SEEDS.items():
            write(workdir / name, content if name == replaced else seed)
        path = workdir / replaced
        cifar10 = verdict(
            tally, "cifar10", lambda: load_dataset("cifar10", "test", workdir, False, False), path
        )
        if cifar10 is not None:
            check_cifar(cifar10.images, cifar10.labels, workdir / CIFAR10_BATCH, 10)
        cifar100 = verdict(
            tally, "cifar100", lambda: load_dataset("cifar100", "test", workdir, False, False), path
        )
        if cifar100 is not None:
            check_cifar(cifar100.images, cifar100.labels, workdir / CIFAR100_TEST, 100)
            assert len(cifar100.classes) == 100 and all(cifar100.classes)
        folder = workdir / "cifar-100-binary"
        read = verdict(
            tally, "cifar100 coarse", lambda: read_cifar100(folder, ["test.bin"], "coarse"), path
        )
        if read is not None:
            check_cifar(read[0], read[1], workdir / CIFAR100_TEST, 20)

    run_fuzz(tally, one, record_property, EXAMPLES[tally.name])


def check_cifar(images: torch.Tensor, labels: torch.Tensor, path: Path, classes: int) -> None:
    records = path.stat().st_size // (3072 + (1 if classes == 10 else 2))
    assert images.dtype == torch.uint8 and images.shape == (records, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (records,)
    assert int(labels.min()) >= 0 and int(labels.max()) < classes
