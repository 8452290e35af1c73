"""Does a PNG or JPEG file hold the pixel data its header declares? Checked before decoding.

Pillow allocates the whole image its header declares, then decodes; when the compressed data
runs out early it pads silently -- with zeros (PNG: a zlib stream that ends before the last row)
or mid-gray (JPEG: an end-of-image marker before the last block) -- and returns a wrong image.
A 60-byte file can so declare 14 million rows and be "decoded" into 280 MB of padding. These
checks read the file (PNG piece by piece, JPEG its first 16 MiB), and find what is missing:

- PNG (ISO/IEC 15948, 10 and 11.2.2): the filtered rows take exactly height x (1 + row bytes)
  bytes (row bytes = ceil(width x bit depth x channels / 8); for Adam7 interlacing, the sum over
  its 7 passes). The IDAT chunks are decompressed piece by piece, only counted; fewer bytes than
  that is a truncated image. This is exact.
- JPEG (ITU-T T.81, Huffman coding: baseline, extended and progressive frames): every scan that
  codes DC coefficients (spectral start 0) spends at least one bit on every 8 x 8 block of its
  components (a Huffman code is at least one bit; a DC refinement bit is one bit). A scan whose
  entropy-coded bytes are fewer than its blocks / 8 cannot cover the image. This is a lower
  bound: it catches headers that lie by more than that (bomb-style sizes), not a few missing
  rows. Arithmetic-coded and hierarchical frames are left to Pillow.

Each check returns None when it finds nothing wrong (including what it does not understand: the
decoder refuses that), else what is wrong, for the caller's error message.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

CHUNK_BYTES = 1 << 20
JPEG_READ_BYTES = 1 << 24  # larger JPEG files (50-megapixel photos) are checked this far
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
JPEG_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)  # SOF0 baseline, SOF1 extended, SOF2 progressive
JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: no length field


def png_problem(path: Path) -> str | None:
    """What is missing from the pixel data of a PNG file, or None."""
    with path.open("rb") as file:
        head = file.read(33)
        if len(head) < 33 or head[12:16] != b"IHDR":
            return None
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
        if colour not in PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace > 1:
            return None
        needed = _png_row_bytes(width, height, depth * PNG_CHANNELS[colour], interlace)
        found = _count_idat_bytes(file, needed)
    if found is None:
        return "corrupt pixel data (a damaged zlib stream in its IDAT chunks)"
    if found < needed:
        return (
            f"truncated pixel data: its {width}x{height} header needs {needed} bytes of filtered "
            f"rows, its IDAT chunks hold {found}"
        )
    return None


def _png_row_bytes(width: int, height: int, bits: int, interlace: int) -> int:
    def rows(columns: int, count: int) -> int:
        return count * (1 + (columns * bits + 7) // 8) if columns > 0 and count > 0 else 0

    if not interlace:
        return rows(width, height)
    return sum(rows(-(-(width - x0) // dx), -(-(height - y0) // dy)) for x0, y0, dx, dy in ADAM7)


def _count_idat_bytes(file, needed: int) -> int | None:
    """Decompressed bytes of the IDAT stream, counted up to `needed` (None: corrupt stream)."""
    inflater, found, in_data = zlib.decompressobj(), 0, False
    file.seek(8)
    while found < needed:
        header = file.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind != b"IDAT":
            if in_data or kind == b"IEND":  # the IDAT chunks are consecutive: the data ended
                break
            file.seek(length + 4, 1)  # a chunk before the data (Pillow has walked these)
            continue
        in_data, left = True, length
        while left and found < needed and not inflater.eof:
            piece = file.read(min(left, CHUNK_BYTES))
            if not piece:
                return found
            left -= len(piece)
            try:
                while piece and found < needed:
                    found += len(inflater.decompress(piece, CHUNK_BYTES))
                    piece = inflater.unconsumed_tail
            except zlib.error:
                return None
        file.seek(left + 4, 1)
    if found < needed and not inflater.eof:
        try:
            found += len(inflater.flush())  # output zlib still holds (at most its window)
        except zlib.error:
            return None
    return found


def jpeg_problem(path: Path) -> str | None:
    """A scan of a JPEG file too short to code every block of its image, or None. Only the
    first JPEG_READ_BYTES of the file are examined."""
    with path.open("rb") as file:
        data = file.read(JPEG_READ_BYTES)
        whole = not file.read(1)
    frame, at = None, 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF or marker in JPEG_STANDALONE:  # fill byte, or no length field
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # end of image
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        segment = data[at + 4 : at + 2 + length]
        at += 2 + length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            if marker not in JPEG_HUFFMAN_FRAMES:
                return None
            frame = _jpeg_frame(segment)
        elif marker == 0xDA:  # start of scan: entropy-coded bytes follow, up to the next marker
            end = _entropy_end(data, at)
            if frame is None or (end == len(data) and not whole):
                return None  # no frame to measure against, or the scan goes on beyond the read
            blocks = _jpeg_scan_blocks(frame, segment)
            if blocks is not None and (end - at) * 8 < blocks:
                height, width, _ = frame
                return (
                    f"truncated pixel data: a scan of its {width}x{height} image must code "
                    f"{blocks} blocks (at least one bit each), it holds {end - at} bytes"
                )
            at = end
    return None


def _jpeg_frame(segment: bytes):
    """(height, width, {component id: (h, v)}) of a frame header, None if it is malformed."""
    if len(segment) < 6:
        return None
    height, width, count = struct.unpack(">HHB", segment[1:6])
    parts = segment[6 : 6 + 3 * count]
    if len(parts) < 3 * count:
        return None
    sampling = {parts[i]: (parts[i + 1] >> 4, parts[i + 1] & 15) for i in range(0, len(parts), 3)}
    return height, width, sampling


def _jpeg_scan_blocks(frame, segment: bytes) -> int | None:
    """How many 8 x 8 blocks a scan that codes DC coefficients covers (None: it codes none, or
    the headers are malformed)."""
    if frame is None or not segment:
        return None
    height, width, sampling = frame
    count = segment[0]
    ids = segment[1 : 1 + 2 * count : 2]
    if len(segment) < 2 + 2 * count or segment[1 + 2 * count] != 0 or len(ids) < count:
        return None  # spectral start above 0: AC only
    if any(c not in sampling or 0 in sampling[c] for c in ids) or not sampling:
        return None
    h_max = max(h for h, _ in sampling.values())
    v_max = max(v for _, v in sampling.values())
    if count == 1:  # non-interleaved: the component's own blocks
        h, v = sampling[ids[0]]
        columns = math.ceil(math.ceil(width * h / h_max) / 8)
        return columns * math.ceil(math.ceil(height * v / v_max) / 8)
    units = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    return units * sum(sampling[c][0] * sampling[c][1] for c in ids)


def _entropy_end(data: bytes, at: int) -> int:
    """Where the entropy-coded segment starting at `at` ends: the next marker that is neither a
    stuffed 0xFF00 nor a restart marker."""
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= len(data):
            return len(data)
        follower = data[at + 1]
        if follower == 0 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            at += 1 if follower == 0xFF else 2
            continue
        return at
