"""Fuzzing the readers of checkpoints and weights: `load_checkpoint`, `read_weights` and
`load_model`.

Each input is a real file on disk, made by Hypothesis from a valid checkpoint (of a tiny model
after one Adam step) or a valid weights file: bit flips, a lying header length, lying tensor
entries (dtypes, shapes and offsets that do not fit the data; tensors dropped, renamed or
duplicated), hostile cnnlab metadata (any JSON value in any node), pickles and random bytes.
The only acceptable failure is a CheckpointError naming the file; a read that succeeds must give
finite weights. The run is under an address-space cap and each read under an alarm (see
fuzz_inputs.py); the inputs are the same on every run. Crashes found are pinned as named
regression tests in test_fuzz_regressions.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_inputs import (
    Field,
    Tally,
    fuzz_settings,
    join_safetensors,
    mutated,
    random_bytes,
    run_fuzz,
    split_safetensors,
    verdict,
    write,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from cnnlab.models import create_model
from cnnlab.runs.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.runs.weights import CHECKPOINT_KEY, WEIGHTS_KEY, load_model, read_weights, save_weights

# Examples per test, sized so that the whole file runs in well under 20 s on 2 idle cores.
EXAMPLES = {"checkpoint": 400, "weights": 400}


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

    run_fuzz(tally, one, record_property, EXAMPLES[tally.name])
