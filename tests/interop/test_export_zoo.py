"""Zoo models export to ONNX and onnxruntime reproduces their logits, with a dynamic batch:
random init, 10 classes, the model's minimum input size, random batches of 1 and 2.

Exporting the whole zoo takes about five minutes on two cores (the exporter's tracing grows with
depth; VGG's 500 MB of weights take seconds to write and load), too long for the test suite.
So the suite exports one model for each kind of building block the zoo has: deeper or wider
members of a family are the same modules repeated (ResNet-101 is ResNet-50's bottleneck more
times), and within a model a run of identical blocks is cut to its first (`without_repeats`).
`python benchmarks/onnx_zoo.py` exports and checks all 36, whole, and BENCHMARKS.md records its
latest table."""

from __future__ import annotations

import onnxruntime
import pytest
import torch
from torch import nn

from cnnlab.interop.export import export_model
from cnnlab.models import create_model, list_models

# one per building block: {model: what only it (of these) covers}
REPRESENTATIVES = {
    "lenet_bn": "sigmoid, average pooling, BatchNorm (the LeNet family)",
    "alexnet": "large kernels and strides, dropout, the adaptive pool before a flatten (as VGG)",
    "nin": "1x1-convolution blocks and a global-average-pooling head",
    "inception_v2": "Inception blocks with BatchNorm and factorised 3x3s",
    "inception_v3": "asymmetric 1xn/nx1 convolutions, grid reductions",
    "inception_resnet_v2": "scaled residual Inception blocks (as Inception-v4's stem)",
    "resnet18": "basic residual blocks with projection shortcuts",
    "preact_resnet18": "pre-activation residual blocks",
    "resnext50_32x4d": "bottlenecks with grouped convolutions (ResNet-50's bottleneck too)",
    "densenet_d2l": "dense blocks (concatenation) and transition layers",
    "fastnet": "the speed-run network's residual layers and scaled head",
}


def test_the_representatives_are_zoo_models():
    assert set(REPRESENTATIVES) <= set(list_models())


def export_and_check(model, tmp_path):
    """Export at the minimum input size and check onnxruntime's graph takes any batch."""
    height, width = model.default_cfg.min_input_size
    path = tmp_path / f"{model.name}.onnx"
    report = export_model(model, (3, height, width), "onnx", path, batch_size=2)
    assert report.passed and report.max_abs_diff <= report.tolerance
    assert [check.batch for check in report.checks] == [1, 2]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (images,), outputs = session.get_inputs(), session.get_outputs()
    assert isinstance(images.shape[0], str) and images.shape[1:] == [3, height, width]
    assert len(outputs) == 1 and outputs[0].shape[1] == 10


def without_repeats(module: nn.Module) -> nn.Module:
    """The model with every run of identical blocks in a Sequential cut to its first block: the
    same kinds of blocks and the same shapes (a repeated block keeps its input's shape), at a
    fraction of the exporter's tracing time."""
    for child in module.children():
        without_repeats(child)
    if isinstance(module, nn.Sequential):
        kept, previous = [], None
        for name, block in module.named_children():
            if repr(block) != previous:
                kept.append((name, block))
            previous = repr(block)
        for name in list(module._modules):
            del module._modules[name]
        for name, block in kept:
            module.add_module(name, block)
    return module


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_zoo_model_exports_to_onnx(name, tmp_path):
    torch.manual_seed(0)
    export_and_check(without_repeats(create_model(name, num_classes=10)), tmp_path)


def test_cutting_repeats_keeps_every_kind_of_block():
    full = create_model("inception_resnet_v2", num_classes=10)
    kinds = {repr(block) for block in full.features}
    cut = without_repeats(create_model("inception_resnet_v2", num_classes=10))
    assert {repr(block) for block in cut.features} == kinds
    assert len(cut.features) < len(full.features) / 3
    images = torch.randn(1, 3, 75, 75)
    assert cut.eval()(images).shape == full.eval()(images).shape == (1, 10)


def test_auxiliary_heads_are_left_out(tmp_path):
    """GoogLeNet (its Inception blocks) with the paper's two auxiliary classifiers: in eval
    mode, hence in the export, only the main logits."""
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=10, aux_logits=True)
    assert len(model.aux) == 2
    export_and_check(model, tmp_path)
