"""A really full disk: `cnnlab train` writing its run folder onto a tiny tmpfs.

The run folder lives on a fresh tmpfs with room for the first epoch's checkpoints (`last` and
`best`) and not one more: the second epoch's `last` hits ENOSPC from the kernel, not from an
injected error (test_atomic_writes.py injects it at chosen moments). The run stops with one
line naming the file and the reason, the first epoch's checkpoint still loads, and no temp file
is left. The mount is made in a private user and mount namespace (`unshare -rm`), so it needs
no root and disappears with the shell; where the kernel does not allow that, the test is
skipped saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from cnnlab.models import create_model
from cnnlab.runs.checkpoint import save_checkpoint

INSPECT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from cnnlab.models import create_model
    from cnnlab.runs.checkpoint import load_checkpoint
    run = Path(sys.argv[1])
    model = create_model("lenet", num_classes=10, in_channels=1)
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    epoch = load_checkpoint(run / "checkpoints" / "last.safetensors", model).state["epoch"]
    print(json.dumps({"files": files, "last_epoch": epoch}))
    """
)


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder]
        return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(
    not namespaces_allowed(),
    reason="this kernel does not let a process mount a tmpfs in its own user namespace "
    "(unshare -rm); the injected-ENOSPC tests in test_atomic_writes.py still run",
)
def test_training_onto_a_really_full_disk(fake_data, tmp_path):
    one = tmp_path / "probe.safetensors"
    save_checkpoint(one, create_model("lenet", num_classes=10, in_channels=1), state={})
    size_kib = (2 * one.stat().st_size + one.stat().st_size // 2) // 1024 + 64
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    run = mount_point / "run"
    train = [sys.executable, "-m", "cnnlab", "train", "--model", "lenet", "--epochs", "3"]
    train += ["--batch-size", "16", "--optimizer", "sgd", "--data-dir", str(fake_data)]
    train += ["--out", str(run), "--device", "cpu", "--quiet", "--threads", "1"]
    train += ["--memory-format", "contiguous"]
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {mount_point} && "
        f"{{ {' '.join(train)} 2> {tmp_path / 'stderr'}; echo $? > {tmp_path / 'code'}; }} && "
        f"{sys.executable} -c '{INSPECT}' {run}"
    )
    inside = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert inside.returncode == 0, inside.stderr
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "code").read_text().strip() == "2", stderr
    assert "Traceback" not in stderr
    last = run / "checkpoints" / "last.safetensors"
    assert stderr.strip().splitlines()[-1] == (
        f"cnnlab train: error: could not write {last}: No space left on device; free some "
        "space or write the run elsewhere (--out); the previous file, if any, is kept"
    )
    found = json.loads(inside.stdout.strip().splitlines()[-1])
    assert found["last_epoch"] == 1
    assert not [name for name in found["files"] if name.endswith(".tmp")]
    assert "checkpoints/best.safetensors" in found["files"]
