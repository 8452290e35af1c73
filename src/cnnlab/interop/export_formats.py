"""Each export format's writer and loader: how `cnnlab export` writes a model in that format
and runs the written file again, to check it against PyTorch (export.py).

- onnx: one file from torch's dynamo exporter at its default opset or the one asked for, input
  "images" with a dynamic batch dimension ("batch"), output "logits"; run in onnxruntime on the
  CPU. The run's description goes into the ONNX metadata_props under "cnnlab".
- torchscript: torch.jit.trace, saved with the description as the extra file cnnlab.json; run
  with torch.jit.load.
- safetensors: cnnlab's weights file, with the description as its metadata; run after
  load_model rebuilds the model from it.

Each writer takes (model, example batch, path, metadata, opset) and returns the opset it made
(ONNX) or None; each loader takes the path and returns a function from a batch to logits.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError

INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_KEY = "cnnlab"
TORCHSCRIPT_METADATA = "cnnlab.json"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
MIN_OPSET = 18  # the dynamo exporter's own; older opsets need a conversion that often fails

Runner = Callable[[torch.Tensor], torch.Tensor]


def model_label(model: nn.Module) -> str:
    """A zoo model's name, else its class name, for messages."""
    return getattr(model, "name", type(model).__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what does not concern the user: torch.onnx's warnings about torchvision (not a
    dependency), onnxscript's log of failed opset conversions (reported in one line), torch.jit's
    deprecation and shape-check warnings (the input shape is fixed but for the verified batch)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def require_onnx() -> None:
    missing = []
    for package in ONNX_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise CnnlabError(
            f"ONNX export needs {', '.join(ONNX_PACKAGES)}; {', '.join(missing)} not installed: "
            'pip install "cnnlab[onnx]"'
        )


def _write_onnx(model, example, path, metadata, opset) -> int:
    """A single-file ONNX model with a dynamic batch dimension; returns its opset."""
    require_onnx()
    name = model_label(model)
    with _quiet():
        try:
            names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
            batch = ({0: torch.export.Dim("batch")},)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=batch,
                opset_version=opset,
                verbose=False,
                **names,
            )
        except Exception as error:  # the exporter fails in many types; the user needs one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CnnlabError(
                f"torch.onnx could not export {name}: {type(error).__name__}: {reason}"
            ) from None
    made = program.model.opset_imports[""]
    if opset is not None and made != opset:
        import onnx.defs

        raise CnnlabError(
            f"torch.onnx could not convert {name} to opset {opset} and made opset {made} "
            f"instead; choose an opset from {MIN_OPSET} to {onnx.defs.onnx_opset_version()}, "
            "or leave --opset out"
        )
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    program.save(path, external_data=False)
    return made


def _load_onnx(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph...)
        reason = str(error).replace(str(path), "the file").strip()
        raise CnnlabError(
            f"onnxruntime {onnxruntime.__version__} cannot load the exported model: {reason}"
        ) from None
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: batch.numpy()})[0])

    return run


def _write_torchscript(model, example, path, metadata, opset) -> None:
    with _quiet():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})


def _load_torchscript(path: Path) -> Runner:
    with _quiet():
        return _runner(torch.jit.load(path, map_location="cpu"))


def _write_safetensors(model, example, path, metadata, opset) -> None:
    from cnnlab.runs.weights import save_weights

    save_weights(path, model, metadata)


def _load_safetensors(path: Path) -> Runner:
    from cnnlab.runs.weights import load_model

    return _runner(load_model(path)[0])


def _runner(module: nn.Module) -> Runner:
    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(batch)

    return run


WRITERS = dict(onnx=_write_onnx, torchscript=_write_torchscript, safetensors=_write_safetensors)
LOADERS = dict(onnx=_load_onnx, torchscript=_load_torchscript, safetensors=_load_safetensors)
