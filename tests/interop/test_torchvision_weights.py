"""torchvision-layout weights into cnnlab models, checked without torchvision.

torchvision_layouts.py lists torchvision's state-dict keys and shapes, built from torchvision's
architecture definitions independently of the renaming rules under test; torchvision_forwards.py
runs small functional forwards over the torchvision-named tensors, following torchvision's
forward passes. GoogLeNet's and Inception-v3's outputs are tested in test_torchvision_compat.py.
"""

import contextlib
import io
import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision_forwards import densenet_forward, resnet_forward, vgg_forward
from torchvision_layouts import (
    COUNTER,
    densenet_layout,
    googlenet_layout,
    inception_v3_layout,
    resnet_layout,
    tensors,
    torchvision_layout,
)

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.interop.torchvision_names import FAMILIES
from cnnlab.interop.torchvision_weights import (
    convert_torchvision_state_dict,
    load_torchvision_state_dict,
)
from cnnlab.models import create_model
from cnnlab.runs.trained import load_trained
from cnnlab.studies.inference import predict_images
from cnnlab.train.setup import build_model

# torchvision's published parameter counts (its weights' "num_params"; googlenet without the
# auxiliary heads, inception_v3 with): the layouts above must add up to them.
PUBLISHED_PARAMS = {
    "alexnet": 61100840, "vgg11": 132863336, "vgg11_bn": 132868840, "vgg13": 133047848,
    "vgg13_bn": 133053736, "vgg16": 138357544, "vgg16_bn": 138365992, "vgg19": 143667240,
    "vgg19_bn": 143678248, "resnet18": 11689512, "resnet34": 21797672, "resnet50": 25557032,
    "resnet101": 44549160, "resnet152": 60192808, "resnext50_32x4d": 25028904,
    "resnext101_32x8d": 88791336, "densenet121": 7978856, "densenet161": 28681000,
    "densenet169": 14149480, "densenet201": 20013928, "googlenet": 6624904,
    "inception_v3": 27161264,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_layouts_have_torchvisions_published_parameter_counts(name):
    layout = googlenet_layout(aux=False) if name == "googlenet" else torchvision_layout(name)
    buffers = ("running_mean", "running_var", COUNTER)
    params = sum(int(np.prod(s)) for k, s in layout.items() if not k.endswith(buffers))
    assert params == PUBLISHED_PARAMS[name]
    assert sorted(PUBLISHED_PARAMS) == sorted(FAMILIES)


# ---- mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_torchvision_tensor_fills_exactly_one_cnnlab_tensor(name):
    layout = torchvision_layout(name)
    converted = convert_torchvision_state_dict(name, tensors(layout))
    with torch.device("meta"):
        expected = create_model(name, **converted.options).state_dict()
    assert list(converted.state_dict) == list(expected)
    assert {k: tuple(v.shape) for k, v in converted.state_dict.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    # the renaming is one-to-one: each torchvision key has its own cnnlab key
    rename = FAMILIES[name].rename
    targets = [f"{rename(k.rpartition('.')[0])}.{k.rpartition('.')[2]}" for k in layout]
    assert sorted(targets) == sorted(expected)
    assert converted.counters_set == 0


def test_files_without_auxiliary_heads_build_models_without_them():
    googlenet = googlenet_layout(aux=False)
    converted = convert_torchvision_state_dict("googlenet", tensors(googlenet))
    assert converted.options == {"aux_logits": False, "torchvision_compat": True}
    v3 = {k: v for k, v in inception_v3_layout().items() if not k.startswith("AuxLogits.")}
    converted = convert_torchvision_state_dict("inception_v3", tensors(v3))
    assert converted.options == {"aux_logits": False, "torchvision_compat": True}
    assert not any(key.startswith("aux.") for key in converted.state_dict)


def test_old_densenet_files_with_dotted_names_and_no_batch_counters_convert():
    layout = densenet_layout("densenet169", legacy=True)
    assert "features.denseblock1.denselayer1.norm.1.weight" in layout
    converted = convert_torchvision_state_dict("densenet169", tensors(layout))
    batch_norms = sum(key.endswith("running_mean") for key in layout)
    assert converted.counters_set == batch_norms
    counter = converted.state_dict["stages.0.layers.0.0.num_batches_tracked"]
    assert counter.dtype == torch.long and counter.shape == ()


def test_a_fine_tuned_classifier_gives_its_class_count():
    layout = resnet_layout("resnet34") | {"fc.weight": (10, 512), "fc.bias": (10,)}
    converted = convert_torchvision_state_dict("resnet34", tensors(layout))
    assert converted.num_classes == 10
    assert converted.state_dict["head.fc.weight"].shape == (10, 512)


# ---- same outputs as torchvision's forward ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("resnet18", resnet_forward),
        ("resnext50_32x4d", resnet_forward),
        ("vgg11_bn", lambda sd, x: vgg_forward(sd, x, "vgg11_bn")),
    ],
)
def test_loaded_models_compute_what_torchvision_computes(name, reference):
    sd = tensors(torchvision_layout(name), "cpu")
    model = load_torchvision_state_dict(name, sd)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(sd, x), rtol=1e-5, atol=1e-5)


def test_densenet_from_an_old_file_computes_what_torchvision_computes():
    sd = tensors(densenet_layout("densenet121", legacy=True), "cpu")
    model = load_torchvision_state_dict("densenet121", sd)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), densenet_forward(sd, x, "densenet121", "."), rtol=1e-5, atol=1e-5
        )


# ---- refusals -----------------------------------------------------------------------------------


def test_unmatched_missing_and_misshapen_keys_are_listed():
    sd = tensors(resnet_layout("resnet18"))
    sd["extra.weight"] = torch.empty(3, device="meta")
    del sd["layer1.0.conv1.weight"]
    sd["layer2.1.bn2.weight"] = torch.empty(127, device="meta")
    with pytest.raises(CnnlabError) as error:
        convert_torchvision_state_dict("resnet18", sd)
    message = str(error.value)
    assert "no counterpart in cnnlab's model: extra.weight" in message
    assert "no key fills: stages.0.0.branch.0.0.weight" in message
    assert "layer2.1.bn2.weight (127,) for stages.1.1.branch.1.1.weight (128,)" in message


def test_a_file_of_another_model_is_refused_naming_the_model_it_fits():
    with pytest.raises(CnnlabError, match=r"not torchvision's resnet18 but its resnet50: "):
        convert_torchvision_state_dict("resnet18", tensors(resnet_layout("resnet50")))


@pytest.mark.parametrize(
    ("name", "state_dict", "expected"),
    [
        ("lenet", {"w": torch.zeros(1)}, "cannot import torchvision weights for 'lenet'"),
        ("resnet18", {"fc.weight": 1}, r"not tensors: 'fc.weight' \(int\)"),
        ("resnet18", {}, "found an empty dict"),
    ],
)
def test_what_is_not_a_torchvision_state_dict_is_refused(name, state_dict, expected):
    with pytest.raises(CnnlabError, match=expected):
        convert_torchvision_state_dict(name, state_dict)


# ---- the command and what uses its output --------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A resnet18 state dict as torchvision's downloads are (torch.save'd, no batch counters),
    the weights file `cnnlab import-weights` made of it, and what the command printed."""
    folder = tmp_path_factory.mktemp("torchvision")
    layout = {k: v for k, v in resnet_layout("resnet18").items() if not k.endswith(COUNTER)}
    sd = tensors(layout, "cpu")
    torch.save(sd, folder / "resnet18-f37072fd.pth")
    out = folder / "resnet18.safetensors"
    argv = ["--model", "resnet18", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["import-weights", str(folder / "resnet18-f37072fd.pth"), *argv]) == 0
    return sd, out, printed.getvalue()


def test_import_weights_writes_a_file_eval_and_predict_load(imported, tmp_path):
    sd, out, printed = imported
    assert "20 BatchNorm num_batches_tracked absent" in printed
    model, metadata = load_trained(str(out))
    assert metadata["mean"] == [0.485, 0.456, 0.406] and metadata["input_size"] == 224
    assert model.stem[0][1].num_batches_tracked.item() == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet_forward(sd, x), rtol=1e-5, atol=1e-5)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(image)
    [(_, top)] = predict_images(str(out), [str(image)], top_k=3, device="cpu")
    assert len(top) == 3 and all(name.isdigit() for name, _ in top)


def test_imported_weights_start_a_fine_tuning(imported):
    sd, out, _ = imported
    config = SimpleNamespace(init_from=str(out), model="resnet18", freeze=None, dataset="cifar10")
    model = build_model(config, num_classes=10, in_channels=3)
    assert model.head.fc.out_features == 10
    torch.testing.assert_close(model.stem[0][0].weight, sd["conv1.weight"])


def test_import_weights_reads_half_precision_safetensors_and_class_names(imported, tmp_path):
    sd, _, _ = imported
    source = tmp_path / "resnet18.safetensors"
    save_file({key: value.half() for key, value in sd.items()}, source)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    out = tmp_path / "out.safetensors"
    argv = ["import-weights", str(source), "--model", "resnet18", "--out", str(out)]
    assert main([*argv, "--classes", str(names)]) == 0
    model, metadata = load_trained(str(out))
    assert metadata["classes"][999] == "class 999"
    assert model.stem[0][0].weight.dtype == torch.float32
    torch.testing.assert_close(model.stem[0][0].weight, sd["conv1.weight"].half().float())


class RunsCode:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    source = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode(marker)}, source)
    out = tmp_path / "out.safetensors"
    assert main(["import-weights", str(source), "--model", "resnet18", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "weights_only=True" in error and error.count("\n") == 1
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not a checkpoint", "not a readable torch.save file"), (None, "no such file")],
)
def test_unreadable_files_are_refused_in_one_line(tmp_path, capsys, content, expected):
    source = tmp_path / "weights.pth"
    if content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.safetensors"
    assert main(["import-weights", str(source), "--model", "resnet18", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1
    assert not os.path.exists(out)
