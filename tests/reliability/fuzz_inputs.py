"""Hostile files for the reader fuzz tests, and the guard every fuzzed read runs under.

Files are made from valid seeds by mutation -- bit flips, byte overwrites, truncation,
insertion, deletion, appended bytes, and header fields set to extreme values (0, 2**31,
2**32 - 1...) -- or from scratch (random bytes). `memory_cap` limits the process's address space
(RLIMIT_AS) to what it uses now plus `HEADROOM`, so that a reader that tries to allocate what a
lying header declares fails loudly (MemoryError or a torch RuntimeError, never a CnnlabError)
even if it would never touch the pages; `verdict` runs one read under an alarm, so a hang fails
too, and accepts only a CnnlabError naming the file; `run_fuzz` runs a whole fuzz test under
the cap and checks how many inputs it tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cnnlab.errors import CnnlabError

HEADROOM = 512 * 2**20  # a fuzzed file is at most a few kB: no read of it needs more
HANG_S = 20  # a read that takes this long is a hang (the fixed-size reads take milliseconds)
EXTREME_U32 = (0, 1, 2, 3, 255, 256, 65535, 65536, 2**24, 2**31 - 1, 2**31, 2**32 - 1)
EXTREME_U16 = (0, 1, 2, 8, 255, 256, 32767, 32768, 65500, 65535)
EXTREME_U8 = (0, 1, 2, 3, 4, 7, 8, 16, 32, 127, 128, 254, 255)


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible CI settings: the same inputs on every run (derandomize, no example database).
    No Hypothesis deadline: timing on a loaded CI machine would make it flaky; the alarm in
    `verdict` (HANG_S) is the per-read time bound, and it only trips on a real hang."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---- the guard -------------------------------------------------------------------------------


def _status(field: str) -> int | None:
    """A size from /proc/self/status in bytes (Linux); None where it is not available."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class MemoryUse:
    cap: int | None  # the address-space limit in force, None where it could not be set
    peak_growth: int | None = None  # peak resident memory in the block minus that at its start


@contextlib.contextmanager
def memory_cap(headroom: int = HEADROOM) -> Iterator[MemoryUse]:
    """Within the block, an allocation that would grow the address space by more than
    `headroom` fails (Linux; elsewhere the block runs unguarded, `cap` None). On exit,
    `peak_growth` is how much the peak resident memory rose within the block."""
    used = _status("VmSize")
    if used is None or not sys.platform.startswith("linux"):
        yield MemoryUse(None)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + headroom if hard == resource.RLIM_INFINITY else min(used + headroom, hard)
    # reset the peak (VmHWM) to the current resident size
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = _status("VmRSS")
    use = MemoryUse(cap)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield use
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        use.peak_growth = _status("VmHWM") - start


class Hang(AssertionError):
    pass


def _on_alarm(signum, frame):
    raise Hang(f"a read ran for more than {HANG_S} s")


@dataclass
class Tally:
    """How many inputs a fuzz test tried and what became of the reads of them."""

    name: str
    tried: int = 0
    outcomes: Counter = None

    def __post_init__(self):
        self.outcomes = Counter()

    def line(self, memory: MemoryUse | None = None) -> str:
        reads = ", ".join(f"{key}: {value}" for key, value in sorted(self.outcomes.items()))
        line = f"fuzz {self.name}: {self.tried} inputs tried ({reads})"
        if memory is not None and memory.peak_growth is not None:
            line += f"; peak memory +{memory.peak_growth / 2**20:.0f} MiB"
        return line


def verdict(tally: Tally, reader: str, read: Callable[[], object], *names) -> object | None:
    """Run `read`; its result, or None when it raised a CnnlabError whose message names one of
    `names` (the file or folder). Any other exception propagates: that is the bug to find."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HANG_S)
    try:
        result = read()
    except CnnlabError as error:
        message = str(error)
        assert any(str(name) in message for name in names), (
            f"the error does not name {names[0]}: {message}"
        )
        tally.outcomes[f"{reader} refused"] += 1
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    tally.outcomes[f"{reader} read"] += 1
    return result


def run_fuzz(tally: Tally, test: Callable[[], None], record_property, examples: int) -> None:
    """Run a Hypothesis test under the memory cap; check it tried at least `examples` inputs and
    that its peak resident memory stayed within the cap's headroom (the cap itself fails any
    allocation past it). The tally goes to stdout (-s) and to the JUnit XML report
    (`record_property`, pytest's fixture)."""
    with memory_cap() as memory:
        test()
    print(tally.line(memory))
    record_property("fuzz_inputs_tried", tally.tried)
    record_property("fuzz_outcomes", dict(tally.outcomes))
    assert tally.tried >= examples, tally.line()
    assert memory.peak_growth is None or memory.peak_growth < HEADROOM, tally.line(memory)


# ---- mutations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A header field that `mutated` may set to an extreme value."""

    offset: int
    fmt: str  # struct format, e.g. ">I"
    extremes: tuple[int, ...]


OPS = ("flip", "byte", "truncate", "append", "insert", "delete")


@st.composite
def mutated(draw, seed: bytes, fields: tuple[Field, ...] = (), hot: int = 64) -> bytes:
    """`seed` after 1 to 4 mutations; positions favour the first `hot` bytes (the header)."""
    data = bytearray(seed)
    ops = OPS + ("field",) * 2 * bool(fields)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        if op == "field":
            field = draw(st.sampled_from(fields))
            size = struct.calcsize(field.fmt)
            if field.offset + size <= len(data):
                top = 2 ** (8 * size) - 1
                value = draw(st.sampled_from(field.extremes) | st.integers(0, top))
                data[field.offset : field.offset + size] = struct.pack(field.fmt, value)
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64) | st.just(b"\0" * 4096))
        elif op == "insert":
            where = draw(_position(len(data) + 1, hot))
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif data:  # flip, byte, delete need a byte to work on
            where = draw(_position(len(data), hot))
            if op == "flip":
                data[where] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte":
                data[where] = draw(st.sampled_from(EXTREME_U8) | st.integers(0, 255))
            else:
                del data[where : where + draw(st.integers(1, 16))]
    return bytes(data)


def _position(size: int, hot: int) -> st.SearchStrategy[int]:
    return st.integers(0, min(size, hot) - 1) | st.integers(0, size - 1)


def random_bytes(*prefixes: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, some starting with a magic number the reader looks for."""
    prefix = st.sampled_from([b"", *prefixes])
    return st.builds(lambda head, body: head + body, prefix, st.binary(max_size=256))


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every whole chunk, so that mutated fields reach the decoder instead of
    failing Pillow's checksum test."""
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        (length,) = struct.unpack(">I", out[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(out[at + 4 : end]))
        at = end + 4
    return bytes(out)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_ihdr_fields() -> tuple[Field, ...]:
    """Width, height, bit depth, colour type, compression, filter and interlace of the IHDR."""
    return (
        Field(16, ">I", EXTREME_U32),
        Field(20, ">I", EXTREME_U32),
        *(Field(offset, ">B", EXTREME_U8) for offset in range(24, 29)),
    )


def jpeg_frame_fields(jpeg: bytes) -> tuple[Field, ...]:
    """Precision, height, width, component count and the first sampling factors of the frame
    header (SOF0 or SOF2) of `jpeg`."""
    at = next(jpeg.find(marker) for marker in (b"\xff\xc0", b"\xff\xc2") if marker in jpeg)
    return (
        Field(at + 4, ">B", EXTREME_U8),
        Field(at + 5, ">H", EXTREME_U16),
        Field(at + 7, ">H", EXTREME_U16),
        Field(at + 9, ">B", EXTREME_U8),
        Field(at + 11, ">B", (0, 0x11, 0x22, 0x44, 0xFF, 0x0F, 0xF0)),
    )


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """The JSON header and the data of a safetensors file."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header: dict, body: bytes, length: int | None = None) -> bytes:
    """A safetensors file from its header and data; `length` overrides the header's length."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def write(path: os.PathLike, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
