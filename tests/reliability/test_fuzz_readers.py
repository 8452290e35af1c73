"""Fuzzing the readers of untrusted files: IDX, CIFAR binary, image folders, checkpoints/weights.

Every input is a real file on disk, made by Hypothesis from a valid seed (bit flips, truncation,
header fields set to extremes, count mismatches, wrong magic or type codes, corrupt gzip) or
from scratch, and read through the public entry points (`load_dataset`, `load_image_folder`,
`ImageFolderStream`, `load_checkpoint`, `read_weights`, `load_model`). The only acceptable
failure is a CnnlabError naming the file; a read that succeeds must return well-formed data.
The whole run is under an address-space cap (`fuzz_inputs.memory_cap`: a reader that tries a
large allocation fails) and each read under an alarm (a hang fails). Hypothesis is derandomized
and has no example database, so CI tries the same inputs every time; each test asserts how many
it tried and prints the tally (run with -s to see it). Crashes found are pinned as named
regression tests in test_fuzz_regressions.py.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
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
    fix_png_crcs,
    fuzz_settings,
    join_safetensors,
    jpeg_frame_fields,
    memory_cap,
    mutated,
    png_chunk,
    png_ihdr_fields,
    random_bytes,
    split_safetensors,
    verdict,
    write,
)
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from cnnlab.data import load_dataset
from cnnlab.data.cifar import read_cifar100
from cnnlab.data.folder import ImageFolderStream, load_image_folder_with_report
from cnnlab.data.idx import TYPES, read_idx
from cnnlab.models import create_model
from cnnlab.train.checkpoint import (
    CHECKPOINT_KEY,
    WEIGHTS_KEY,
    load_checkpoint,
    load_model,
    read_weights,
    save_checkpoint,
    save_weights,
)

# Examples per test, sized so that the whole file runs in well under 40 s on 2 idle cores.
EXAMPLES = {"idx": 900, "cifar": 300, "folder": 400, "checkpoint": 400, "weights": 400}


@pytest.fixture
def workdir():
    """A scratch folder reused by every example of one test (examples overwrite its files)."""
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run_fuzz(tally: Tally, test, record_property) -> None:
    """Run a Hypothesis test under the memory cap; check it ran its examples and that its peak
    resident memory stayed within the cap's headroom (the cap itself fails any allocation past
    it). The tally goes to stdout (-s) and to the JUnit XML report (record_property)."""
    with memory_cap() as memory:
        test()
    print(tally.line(memory))
    record_property("fuzz_inputs_tried", tally.tried)
    record_property("fuzz_outcomes", dict(tally.outcomes))
    assert tally.tried >= EXAMPLES[tally.name], tally.line()
    assert memory.peak_growth is None or memory.peak_growth < HEADROOM, tally.line(memory)


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

    run_fuzz(tally, one, record_property)


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

    run_fuzz(tally, one, record_property)


def check_cifar(images: torch.Tensor, labels: torch.Tensor, path: Path, classes: int) -> None:
    records = path.stat().st_size // (3072 + (1 if classes == 10 else 2))
    assert images.dtype == torch.uint8 and images.shape == (records, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (records,)
    assert int(labels.min()) >= 0 and int(labels.max()) < classes


# ---- image folders ---------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


GRAY = Image.fromarray((np.arange(20).reshape(4, 5) * 12).astype(np.uint8))
COLOUR = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8))
IMAGE_SEEDS = {
    "png gray": encode(GRAY, "PNG"),
    "png rgb": encode(COLOUR, "PNG"),
    "png rgba": encode(COLOUR.convert("RGBA"), "PNG"),
    "png palette": encode(COLOUR.convert("P"), "PNG"),
    "png 16-bit": encode(Image.fromarray(np.asarray(GRAY).astype(np.uint16) * 257), "PNG"),
    "png 1-bit": encode(GRAY.convert("1"), "PNG"),
    "png gray+alpha": encode(GRAY.convert("LA"), "PNG"),
    "jpeg gray": encode(GRAY, "JPEG"),
    "jpeg rgb": encode(COLOUR, "JPEG"),
    "jpeg progressive": encode(COLOUR, "JPEG", progressive=True),
    "jpeg cmyk": encode(COLOUR.convert("CMYK"), "JPEG"),
}
PNG_FIELDS = png_ihdr_fields()
JPEG_FIELDS = {
    name: jpeg_frame_fields(seed) for name, seed in IMAGE_SEEDS.items() if "jpeg" in name
}
NOT_IMAGES = (
    b"",
    b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    b"BM" + b"\0" * 60,
    b"II*\x00" + b"\0" * 12,
    b"hello, I am text with an image extension\n",
    b"\x89PNG\r\n\x1a\n",  # a signature and nothing more
    b"\xff\xd8\xff",
)


@st.composite
def png_headers(draw) -> bytes:
    """A PNG with valid chunk checksums whose IHDR declares extreme sizes, depths and colour
    types (decompression-bomb style: billions of pixels, a few bytes of data)."""
    width, height = (draw(st.sampled_from(EXTREME_U32) | st.integers(1, 10**5)) for _ in "wh")
    depth = draw(st.sampled_from((1, 2, 4, 8, 16, 0, 3, 255)))
    colour = draw(st.sampled_from((0, 2, 3, 4, 6, 1, 7, 255)))
    interlace = draw(st.sampled_from((0, 1, 2)))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    pixels = zlib.compress(draw(st.binary(max_size=64)) or b"\0" * 1000)
    chunks = [png_chunk(b"IHDR", ihdr), png_chunk(b"IDAT", pixels), png_chunk(b"IEND", b"")]
    if colour == 3:
        chunks.insert(1, png_chunk(b"PLTE", bytes(range(48))))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


@st.composite
def image_contents(draw) -> bytes:
    name = draw(st.sampled_from(sorted(IMAGE_SEEDS)))
    seed = IMAGE_SEEDS[name]
    kind = draw(st.sampled_from(["valid", "damaged", "damaged", "bomb header", "not an image"]))
    if kind == "valid":
        return seed
    if kind == "bomb header":
        return draw(png_headers())
    if kind == "not an image":
        return draw(st.sampled_from(NOT_IMAGES) | random_bytes(b"\x89PNG\r\n\x1a\n", b"\xff\xd8"))
    if name.startswith("png"):
        damaged = draw(mutated(seed, PNG_FIELDS, hot=40))
        return fix_png_crcs(damaged) if draw(st.booleans()) else damaged
    return draw(mutated(seed, JPEG_FIELDS[name], hot=200))


WEIRD_NAMES = (
    "-rf", " lead", "trail ", "new\nline", "tab\tbed", "back\\slash", "quote'\"", "名前",
    "e\u0301", "\u00e9", "\u202eevil", "x" * 200, "\udcff\udcfe", "train", "test", "CON", ".hidden",
)  # fmt: skip
NAME = st.sampled_from(WEIRD_NAMES) | st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=12
)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JpEg", "", ".gif", ".png.txt")


def usable(name: str) -> bool:
    return name not in (".", "..") and len(os.fsencode(name)) <= 250


@st.composite
def class_folder(draw) -> list[tuple[str, str, bytes]]:
    """(name, kind, content) of the entries of one class folder."""
    entries = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(NAME) + draw(st.sampled_from(EXTENSIONS))
        kind = draw(st.sampled_from(["file"] * 6 + ["folder", "dangling link", "fifo"]))
        if usable(name):
            entries[name] = (kind, draw(image_contents()) if kind == "file" else b"")
    return [(name, kind, content) for name, (kind, content) in entries.items()]


@st.composite
def image_trees(draw) -> dict[str, list[tuple[str, str, bytes]]]:
    names = draw(st.lists(NAME.filter(usable), min_size=1, max_size=3, unique=True))
    return {name: draw(class_folder()) for name in names}


def build_tree(root: Path, tree: dict[str, list[tuple[str, str, bytes]]]) -> int:
    """Write the tree; returns how many regular files with an image extension it holds."""
    images = 0
    for class_name, entries in tree.items():
        folder = root / class_name
        folder.mkdir(parents=True)
        for name, kind, content in entries:
            path = folder / name
            if kind == "file":
                write(path, content)
                visible = not (name.startswith(".") or class_name.startswith("."))
                images += visible and name.lower().endswith((".png", ".jpg", ".jpeg"))
            elif kind == "folder":
                path.mkdir()
            elif kind == "dangling link":
                path.symlink_to(root / "nowhere")
            else:
                os.mkfifo(path)  # opening it would block: the reader must not
    return images


def test_image_folder_fuzz(workdir, record_property):
    """A folder of class folders with weird names holding corrupt, truncated, empty, misnamed,
    bomb-sized and valid PNG/JPEG files (and folders, dangling links and FIFOs named like images):
    `load_image_folder_with_report` and `ImageFolderStream` refuse it with a DataError naming
    the folder or read well-formed images, under both error policies."""
    tally = Tally("folder")

    @fuzz_settings(EXAMPLES["folder"])
    @given(
        tree=image_trees(),
        on_error=st.sampled_from(["fail", "skip"]),
        image_size=st.sampled_from([None, (4, 5), (3, 2)]),
    )
    def one(tree, on_error, image_size):
        tally.tried += 1
        root = workdir / f"tree{tally.tried}"
        images = build_tree(root, tree)
        try:
            options = {"on_error": on_error, "image_size": image_size}
            read = verdict(
                tally, "load", lambda: load_image_folder_with_report(root, **options), root
            )
            if read is not None:
                data, report = read
                assert data.images.dtype == torch.uint8 and data.images.ndim == 4
                assert data.images.shape[1] in (1, 3) and len(data) == report.kept
                assert report.kept + len(report.skipped) == images
                assert 0 <= int(data.labels.min()) <= int(data.labels.max()) < len(data.classes)
            stream = verdict(tally, "stream", lambda: ImageFolderStream(root, **options), root)
            for index in range(len(stream or ())):
                item = verdict(tally, "stream item", lambda i=index: stream[i], root)
                if item is not None:
                    assert item[0].shape == (stream.channels, *stream.size)
                    assert item[0].dtype == torch.uint8
        finally:
            shutil.rmtree(root)

    run_fuzz(tally, one, record_property)


# ---- checkpoints and weights -----------------------------------------------------------------


def tiny_training() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2)


@functools.cache
def seed_files() -> dict[str, bytes]:
    """A checkpoint of a tiny model after one Adam step, and fastnet weights (a few kB each),
    made without disturbing torch's global RNG."""
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-seed-"))
    with torch.random.fork_rng():
        model, optimizer, scheduler = tiny_training()
        model(torch.ones(2, 1, 4, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        generators = {"data": torch.Generator().manual_seed(0).get_state()}
        state = {"epoch": 1, "step": 3, "history": [{"loss": 0.5}]}
        save_checkpoint(folder / "c", model, optimizer, scheduler, state, generators)
        options = {"widths": [2, 2, 2], "stem_width": 2, "depth": 1}
        torch.manual_seed(0)
        net = create_model("fastnet", num_classes=2, in_channels=1, **options)
        description = {"model": "fastnet", "num_classes": 2, "in_channels": 1, "options": options}
        save_weights(folder / "w", net, description)
    seeds = {"checkpoint": (folder / "c").read_bytes(), "weights": (folder / "w").read_bytes()}
    shutil.rmtree(folder)
    return seeds


EXTREME_U64 = (0, 1, 7, 8, 2**31, 2**32, 10**8, 2**63 - 1, 2**63, 2**64 - 1)
DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "U64", "BOOL", "F8_E4M3", "C64")
SHAPES = ([], [0], [1], [2**31], [2**32 + 1], [2**63 - 1], [2**64], [-1], [1.5], ["1"], [1] * 40)
KEYS = (
    "model.0.weight", "model.missing", "optimizer.state.0.exp_avg", "optimizer.state.x",
    "optimizer.state.99.step", "optimizer.state.0", "rng.torch", "rng.", "extra.ema.0.weight",
    "", "__metadata__", "features.0.weight", "head.fc.weight",
)  # fmt: skip
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from((-1, 0, 1, 2, 3, 2**31, 10**12, 2**70, 1.5, "2", "fastnet", "vgg19"))
    | st.integers()
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def lying_headers(draw, seed: bytes) -> bytes:
    """The seed with its JSON header edited: dtypes, shapes and offsets that do not fit the data
    (overlapping, reversed, beyond the file, 2**64), tensors dropped, renamed or duplicated,
    hostile metadata, a cut body, a header length that lies."""
    header, body = split_safetensors(seed)
    keys = sorted(key for key in header if key != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename", "copy", "meta"]))
        key = draw(st.sampled_from(keys))
        entry = header.get(key)
        if entry is None:
            continue
        if op == "dtype":
            entry["dtype"] = draw(st.sampled_from(DTYPES) | st.text(max_size=4))
        elif op == "shape":
            entry["shape"] = draw(st.sampled_from(SHAPES) | st.lists(st.integers(0, 9), max_size=4))
        elif op == "offsets":
            offsets = entry["data_offsets"]  # an earlier lie may have made it a non-pair
            begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else (0, 8)
            lies = [[end, begin], [begin, begin], [0, len(body)], [begin, 2**63], [begin, 2**64]]
            entry["data_offsets"] = draw(
                st.sampled_from([*lies, [-1, end], [begin], "x"])
                | st.lists(st.integers(0, len(body) + 8), min_size=2, max_size=2)
            )
        elif op == "drop":
            del header[key]
        elif op in ("rename", "copy"):
            header[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = (
                header.pop(key) if op == "rename" else dict(entry)
            )
        else:
            header["__metadata__"] = draw(JSON)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    length = draw(st.none() | st.none() | st.sampled_from(EXTREME_U64))
    return join_safetensors(header, body, length)


@st.composite
def fuzzed_documents(draw, seed: bytes, key: str) -> bytes:
    """The seed with one node of its cnnlab JSON metadata (`key`) replaced by any JSON value or
    deleted: the checkpoint's optimizer, scheduler and state, or the weights' model name,
    class count, channels and build options."""
    header, body = split_safetensors(seed)
    document = json.loads(header["__metadata__"][key])
    paths = list(json_paths(document))
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(paths))
        if not path:
            document = draw(JSON)
            break
        parent = document
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    header["__metadata__"][key] = json.dumps(document)
    return join_safetensors(header, body)


def json_paths(node, prefix=()):
    yield prefix
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for step, child in items:
        yield from json_paths(child, (*prefix, step))


SAFETENSORS_FIELDS = (Field(0, "<Q", EXTREME_U64),)


@st.composite
def checkpoint_files(draw, seed: bytes, key: str) -> bytes:
    header_end = 8 + struct.unpack("<Q", seed[:8])[0]
    return draw(
        mutated(seed, SAFETENSORS_FIELDS, hot=header_end)
        | lying_headers(seed)
        | fuzzed_documents(seed, key)
        | fuzzed_documents(seed, key)
        | random_bytes(b"PK\x03\x04", b"\x80\x04\x95", struct.pack("<Q", 40), seed[:8])
    )


def all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex())


def read_checkpoint_every_way(tally: Tally, path: Path) -> None:
    """load_checkpoint into a fresh tiny model, read_weights and load_model: each refuses the file
    with a CheckpointError naming it or gives finite weights."""
    model, optimizer, scheduler = tiny_training()
    restored = verdict(
        tally, "load_checkpoint", lambda: load_checkpoint(path, model, optimizer, scheduler), path
    )
    if restored is not None:
        assert all_finite(model.state_dict().values())
    weights = verdict(tally, "read_weights", lambda: read_weights(path), path)
    if weights is not None:
        assert all_finite(weights[0].values()) and isinstance(weights[1], dict)
    loaded = verdict(tally, "load_model", lambda: load_model(path), path)
    if loaded is not None:
        assert not loaded[0].training and all_finite(loaded[0].state_dict().values())


@pytest.fixture
def torch_rng():
    """load_checkpoint restores torch's global RNG from the file: put it back afterwards."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.mark.parametrize(
    ("name", "key"),
    [("checkpoint", CHECKPOINT_KEY), ("weights", WEIGHTS_KEY)],
    ids=["checkpoint", "weights"],
)
def test_checkpoint_reader_fuzz(workdir, record_property, torch_rng, name, key):
    """A damaged checkpoint (or weights file): bit flips, a lying header length, lying tensor
    entries, hostile cnnlab metadata, pickles and random bytes. Every reader refuses it with a
    CheckpointError naming it, or loads finite weights."""
    tally = Tally(name)
    path = workdir / f"{name}.safetensors"

    @fuzz_settings(EXAMPLES[name])
    @given(content=checkpoint_files(seed_files()[name], key))
    def one(content):
        tally.tried += 1
        write(path, content)
        read_checkpoint_every_way(tally, path)

    run_fuzz(tally, one, record_property)
