"""GoogLeNet and Inception-v3 from torchvision-layout weights: torchvision's outputs.

cnnlab's default GoogLeNet and Inception-v3 follow the papers where torchvision does not (the
max pool after 4e; average pools that leave the zero padding out), so weights imported without
any flag build them with `torchvision_compat=True`. Compared with torchvision's forward passes
(torchvision_forwards.py) on random weights with random BatchNorm statistics: the logits within
1e-5 relative (max |difference| / max |logit|), the auxiliary heads in training mode too, and
the inputs of torchvision's `transform_input` through the weights file's mean and std; cnnlab's
default (paper) form still computes otherwise; the option travels in the weights file.
"""

import contextlib
import functools
import io
from types import SimpleNamespace

import pytest
import torch
from torchvision_forwards import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    googlenet_forward,
    inception_v3_aux,
    inception_v3_forward,
)
from torchvision_layouts import googlenet_layout, tensors, torchvision_layout

from cnnlab.cli import main
from cnnlab.interop.torchvision_weights import (
    convert_torchvision_state_dict,
    load_torchvision_state_dict,
)
from cnnlab.models import create_model
from cnnlab.runs.trained import load_trained
from cnnlab.train.setup import build_model

FORWARDS = {"googlenet": googlenet_forward, "inception_v3": inception_v3_forward}
SIZES = {"googlenet": 224, "inception_v3": 299}  # 299: the least the auxiliary head takes
PARITY = 1e-5
# The paper forms differ from torchvision's by 7e-4 (GoogLeNet) and 2e-2 (Inception-v3) on
# these weights and inputs, torchvision's form by 0 (1e-7 through transform_input's rescaling).
PAPER_FORM_DIFFERS_BY = 1e-4


@functools.cache
def torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """A full torchvision state dict of `name` (auxiliary heads included), random values."""
    return tensors(torchvision_layout(name), "cpu")


def relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    return float((found - expected).abs().max() / expected.abs().max())


def random_batch(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_imported_weights_give_torchvisions_logits(name):
    sd = torchvision_weights(name)
    model = load_torchvision_state_dict(name, sd)
    x = random_batch(2, SIZES[name])
    with torch.no_grad():
        found, expected = model(x), FORWARDS[name](sd, x)
    assert relative_difference(found, expected) <= PARITY
    torch.testing.assert_close(found, expected, rtol=PARITY, atol=PARITY)


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_the_paper_form_still_computes_otherwise(name):
    sd = torchvision_weights(name)
    converted = convert_torchvision_state_dict(name, sd, accept_differences=True)
    assert "torchvision_compat" not in converted.options and converted.difference
    x = random_batch(1, SIZES[name])
    with torch.no_grad():
        difference = relative_difference(converted.build()(x), FORWARDS[name](sd, x))
    assert difference > PAPER_FORM_DIFFERS_BY


def without_dropout(name: str, **options) -> torch.nn.Module:
    """The model torchvision's weights convert to, with no dropout (so that training mode is
    deterministic), in training mode: BatchNorm on batch statistics, auxiliary heads on."""
    converted = convert_torchvision_state_dict(name, torchvision_weights(name))
    model = create_model(name, **converted.options, dropout=0.0, **options)
    model.load_state_dict(converted.state_dict)
    return model.train()


def test_googlenets_auxiliary_heads_give_torchvisions_in_training_mode():
    model = without_dropout("googlenet", aux_dropout=0.0)
    x = random_batch(2, 96, seed=2)  # aux1 on 4a's output, aux2 on 4d's, as torchvision's
    with torch.no_grad():
        expected = googlenet_forward(torchvision_weights("googlenet"), x, training=True)
        found = model(x)
    assert found.keys() == expected.keys() == {"logits", "aux1", "aux2"}
    for head in expected:
        assert relative_difference(found[head], expected[head]) <= PARITY, head


def test_inception_v3s_auxiliary_head_gives_torchvisions_in_training_mode():
    model = without_dropout("inception_v3")
    mixed_6e = torch.randn(2, 768, 17, 17, generator=torch.Generator().manual_seed(2)).relu()
    with torch.no_grad():
        found = model.aux(mixed_6e)
        expected = inception_v3_aux(torchvision_weights("inception_v3"), mixed_6e, True)
    assert relative_difference(found, expected) <= PARITY


# ---- the command: the option saved, the model rebuilt with it ------------------------------------


@pytest.fixture(scope="module", params=sorted(FORWARDS))
def imported(request, tmp_path_factory):
    """(model name, the weights file `cnnlab import-weights` made of a torch.save'd torchvision
    state dict with no flag, what it printed)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    torch.save(torchvision_weights(name), folder / f"{name}.pth")
    out = folder / f"{name}.safetensors"
    argv = ["import-weights", str(folder / f"{name}.pth"), "--model", name, "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(argv) == 0
    return name, out, printed.getvalue()


def test_import_weights_saves_the_option_and_rebuilds_with_it(imported):
    name, out, printed = imported
    assert "torchvision_compat=True" in printed and "differs" not in printed
    model, metadata = load_trained(str(out))  # what cnnlab eval and predict load
    assert metadata["options"] == {"aux_logits": True, "torchvision_compat": True}
    assert "difference" not in metadata["imported_from"]
    assert metadata["mean"] == metadata["std"] == [0.5, 0.5, 0.5]
    # Pixels in [0, 1]: torchvision's pretrained model takes them ImageNet-normalised and
    # rescales them (transform_input); cnnlab normalises them with the file's mean and std.
    pixels = random_batch(1, SIZES[name], seed=3).sigmoid()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (metadata["mean"], metadata["std"]))
    imagenet_mean, imagenet_std = (
        torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD)
    )
    with torch.no_grad():
        found = model((pixels - mean) / std)
        normalised = (pixels - imagenet_mean) / imagenet_std
        expected = FORWARDS[name](torchvision_weights(name), normalised, transform=True)
    assert relative_difference(found, expected) <= PARITY


@pytest.mark.parametrize("imported", ["googlenet"], indirect=True)
def test_fine_tuning_from_imported_weights_keeps_torchvisions_network(imported):
    name, out, _ = imported
    config = SimpleNamespace(init_from=str(out), model=name, freeze=None, dataset="cifar10")
    model = build_model(config, num_classes=10, in_channels=3)  # train --init-from
    with torch.device("meta"):
        compat = create_model(name, aux_logits=True, torchvision_compat=True)
        paper = create_model(name, aux_logits=True)
    assert pools(model) == pools(compat) != pools(paper)


def pools(model: torch.nn.Module) -> list[tuple]:
    """Every pool's kind, kernel and whether it averages over the zero padding."""
    kinds = (torch.nn.MaxPool2d, torch.nn.AvgPool2d)
    return [
        (type(m).__name__, m.kernel_size, getattr(m, "count_include_pad", None))
        for m in model.modules()
        if isinstance(m, kinds)
    ]


def test_accept_differences_writes_the_paper_form_and_says_so(tmp_path, capsys):
    source = tmp_path / "googlenet.pth"
    torch.save(tensors(googlenet_layout(aux=False), "cpu"), source)
    out = tmp_path / "googlenet.safetensors"
    argv = ["import-weights", str(source), "--model", "googlenet", "--out", str(out)]
    assert main([*argv, "--accept-differences"]) == 0
    assert "differs from torchvision's network: the max pool after inception4e" in (
        capsys.readouterr().out
    )
    model, metadata = load_trained(str(out))
    assert metadata["options"] == {"aux_logits": False}
    assert "3x3/2" in metadata["imported_from"]["difference"]
    assert model.features.pool4.kernel_size == 3
