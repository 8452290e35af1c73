"""Fuzzing the image-folder readers: `load_image_folder_with_report` and `ImageFolderStream`.

Each input is a real folder of class folders, made by Hypothesis: weird names (control
characters, right-to-left marks, undecodable bytes, 200 characters), and in them valid,
mutated (bit flips, truncation, extreme IHDR and JPEG frame fields, with or without fixed PNG
checksums), bomb-sized (billions of declared pixels in a few bytes) and non-image files named
like images, beside folders, dangling links and FIFOs with image extensions. The only acceptable
failure is a DataError naming the folder; a read that succeeds must return well-formed images,
under both error policies. The run is under an address-space cap and each read under an alarm
(see fuzz_inputs.py); the inputs are the same on every run. Crashes found are pinned as named
regression tests in test_fuzz_regressions.py.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from fuzz_inputs import (
    EXTREME_U32,
    Tally,
    fix_png_crcs,
    fuzz_settings,
    jpeg_frame_fields,
    mutated,
    png_chunk,
    png_ihdr_fields,
    random_bytes,
    run_fuzz,
    verdict,
    write,
)
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data.folder import ImageFolderStream, load_image_folder_with_report

# Examples per test, sized so that the whole file runs in well under 20 s on 2 idle cores.
EXAMPLES = {"folder": 400}


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

    run_fuzz(tally, one, record_property, EXAMPLES[tally.name])
