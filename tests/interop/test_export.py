"""cnnlab export: a one-epoch run exported to ONNX, TorchScript and safetensors through the CLI,
each file checked independently; the verification catches wrong files; failures are one line."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.interop.export import export_model, verification_inputs, verify_export
from cnnlab.interop.export_formats import LOADERS, require_onnx
from cnnlab.models import create_model
from cnnlab.runs.trained import load_trained
from cnnlab.runs.weights import load_model

DEFAULT_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.pt",
    "safetensors": "model-export.safetensors",
}
RUN_IMAGES = "fashion-mnist/test images"


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    """A LeNet with BatchNorm (so runtimes that fold BatchNorm into the convolutions are
    tested) trained for one epoch on the fake Fashion-MNIST."""
    folder = tmp_path_factory.mktemp("export") / "run"
    argv = ["train", "--model", "lenet_bn", "--data-dir", str(shared_data), "--epochs", "1"]
    argv += ["--batch-size", "32", "--out", str(folder), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    return folder


@pytest.fixture(scope="module")
def exported(run):
    """Each format exported once through the CLI with --json: {format: report dict}."""
    reports = {}
    for fmt in DEFAULT_NAMES:
        stdout = _capture(lambda fmt=fmt: main(["export", str(run), "--format", fmt, "--json"]))
        reports[fmt] = json.loads(stdout)
    return reports


def _capture(call) -> str:
    """stdout of `call`, which must succeed (module-scoped fixtures cannot use capsys)."""
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        assert call() == 0
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", list(DEFAULT_NAMES))
def test_cli_exports_each_format_verified(run, exported, fmt):
    report = exported[fmt]
    assert report["path"] == str(run / DEFAULT_NAMES[fmt]) and (run / DEFAULT_NAMES[fmt]).is_file()
    assert report["passed"] and report["max_abs_diff"] <= report["tolerance"]
    assert [(c["inputs"], c["batch"]) for c in report["checks"]] == [
        ("random N(0, 1)", 1),
        ("random N(0, 1)", 4),
        (RUN_IMAGES, 4),
    ]
    assert report["not_checked"] == []
    assert report["output_scale"] > 0.1  # logits of a trained model, not a degenerate zero
    if fmt == "safetensors":
        assert report["tolerance"] == 0 and report["max_abs_diff"] == 0
    else:
        assert report["tolerance"] == pytest.approx(1e-4 * report["output_scale"])


def test_onnx_file_has_a_dynamic_batch_and_runs_at_batch_5(run, exported):
    path = run / "model.onnx"
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert exported["onnx"]["opset"] == proto.opset_import[0].version >= 18
    described = json.loads({p.key: p.value for p in proto.metadata_props}["cnnlab"])
    model, metadata = load_trained(str(run))
    assert described["classes"] == metadata["classes"] and described["mean"] == metadata["mean"]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (images.name, logits.name) == ("images", "logits")
    assert isinstance(images.shape[0], str) and images.shape[1:] == [1, 28, 28]
    batch = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    (found,) = session.run(None, {"images": batch.numpy()})
    with torch.no_grad():
        expected = model(batch)
    assert found.shape == (5, 10)
    np.testing.assert_allclose(found, expected.numpy(), rtol=0, atol=1e-4 * expected.abs().max())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_and_safetensors_files_reload_on_their_own(run):
    model, metadata = load_trained(str(run))
    batch = torch.randn(3, 1, 28, 28)
    extra = {"cnnlab.json": ""}
    scripted = torch.jit.load(run / "model.pt", _extra_files=extra)
    assert json.loads(extra["cnnlab.json"])["classes"] == metadata["classes"]
    reloaded, reloaded_metadata = load_model(run / "model-export.safetensors")
    assert reloaded_metadata == metadata
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch), model(batch))
        assert torch.equal(reloaded(batch), model(batch))


def test_text_report_states_each_difference_and_the_tolerance(run, tmp_path, capsys):
    out = tmp_path / "lenet.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (torchscript)" in text and RUN_IMAGES in text
    assert "max abs diff 0 <= tolerance" in text.splitlines()[-1]
    assert out.is_file()


def _tamper(source, target) -> None:
    """Copy an ONNX file with one weight of the final layer changed by 0.5."""
    proto = onnx.load(source)
    weight = next(t for t in proto.graph.initializer if t.name.startswith("fc."))
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, target)


def test_verification_catches_an_altered_weight_and_another_model(run, exported, tmp_path):
    model, _ = load_trained(str(run))
    inputs = verification_inputs((1, 28, 28), 4, {})
    assert verify_export(run / "model.onnx", "onnx", model, inputs).passed

    _tamper(run / "model.onnx", tmp_path / "tampered.onnx")
    report = verify_export(tmp_path / "tampered.onnx", "onnx", model, inputs)
    assert not report.passed and report.max_abs_diff > 100 * report.tolerance

    torch.manual_seed(1)
    other = create_model("lenet_bn", num_classes=10, in_channels=1).eval()
    assert not verify_export(run / "model.onnx", "onnx", other, inputs).passed


def test_failed_verification_writes_nothing(run, tmp_path, monkeypatch):
    model, _ = load_trained(str(run))
    target = tmp_path / "model.pt"
    target.write_bytes(b"an earlier export")
    load_torchscript = LOADERS["torchscript"]

    def load_shifted(path):  # a file whose logits are all 1 too high
        run_file = load_torchscript(path)
        return lambda batch: run_file(batch) + 1.0

    monkeypatch.setitem(LOADERS, "torchscript", load_shifted)
    with pytest.raises(CnnlabError, match=r"model.pt not written: .* by 1 on random N\(0, 1\)"):
        export_model(model, (1, 28, 28), "torchscript", target)
    assert target.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_library_export_without_a_run_folder(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet_modern", num_classes=4, in_channels=3)
    report = export_model(model, (3, 16, 20), "onnx", tmp_path / "net.onnx", batch_size=2)
    assert report.passed and report.opset >= 18
    assert [(c.inputs, c.batch) for c in report.checks] == [
        ("random N(0, 1)", 1),
        ("random N(0, 1)", 2),
    ]
    described = {p.key: p.value for p in onnx.load(tmp_path / "net.onnx").metadata_props}
    assert json.loads(described["cnnlab"]) == {
        "model": "lenet_modern",
        "num_classes": 4,
        "in_channels": 3,
    }
    report = export_model(model, (3, 16, 20), "safetensors", tmp_path / "net.safetensors")
    assert report.passed and load_model(tmp_path / "net.safetensors")[1]["model"] == "lenet_modern"


def test_weights_file_exports_beside_itself_and_says_what_it_did_not_check(run, tmp_path, capsys):
    weights = tmp_path / "mine.safetensors"
    shutil.copyfile(run / "model.safetensors", weights)
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["export", str(weights), "--format", "torchscript", "--data-dir", str(empty)]
    assert main([*argv, "--batch-size", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(tmp_path / "mine.pt") and (tmp_path / "mine.pt").is_file()
    assert [c["batch"] for c in report["checks"]] == [1, 3]
    (reason,) = report["not_checked"]
    assert reason.startswith("fashion-mnist images: dataset not on disk")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite"], "unknown export format 'tflite': expected one of onnx, "),
        (["--format", "onnx", "--out", "{tmp}/missing/m.onnx"], "folder {tmp}/missing does not"),
        (["--format", "onnx", "--batch-size", "1"], "batch size 1: it must be at least 2"),
        (["--format", "torchscript", "--opset", "18"], "--opset applies to the onnx format only"),
        (["--format", "onnx", "--opset", "12"], "could not convert lenet_bn to opset 12"),
    ],
)
def test_errors_are_one_line(run, tmp_path, capsys, argv, message):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["export", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.count("\n") == 1


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_onnx_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(CnnlabError, match=r'onnxscript not installed: pip install "cnnlab\[onnx'):
        require_onnx()
