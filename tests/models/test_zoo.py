"""Registry-driven checks that every model passes: build, forward at the minimum and default
inputs, gradients everywhere, train/eval behaviour, the shared interface, and published counts."""

import pytest
import torch
from torch import nn

from cnnlab.errors import InputShapeError, UnknownModelError
from cnnlab.models import ClassifierModel, create_model, list_models

ALL = list_models()

# Published parameter counts of the ImageNet configurations (1000 classes, 3 input channels).
PUBLISHED = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "inception_v3": 27_161_264,
    "inception_v4": 42_679_816,
    "inception_resnet_v2": 55_843_464,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}

# Every model the zoo promises.
EXPECTED = {
    *PUBLISHED,
    "lenet",
    "lenet_bn",
    "lenet_modern",
    "nin",
    "inception_v2",
    "densenet_d2l",
    "fastnet",
    *(f"preact_resnet{depth}" for depth in (18, 34, 50, 101, 152)),
}


def outputs(result) -> list[torch.Tensor]:
    return list(result.values()) if isinstance(result, dict) else [result]


def small_input(model: ClassifierModel, batch: int = 2) -> torch.Tensor:
    height, width = model.default_cfg.min_input_size
    return torch.randn(batch, model.in_channels, height, width)


def test_every_promised_model_is_registered():
    assert set(ALL) == EXPECTED


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


@pytest.mark.parametrize("name", ALL)
def test_default_input_on_meta(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_channels=1).eval()
    cfg = model.default_cfg
    assert cfg.input_size[0] == 1 and cfg.paper and 1989 <= cfg.year <= 2020
    assert cfg.min_input_size[0] <= cfg.input_size[1]
    out = model(torch.zeros(2, *cfg.input_size, device="meta"))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ALL)
def test_minimum_input_trains_and_evaluates(name):
    """One build per model (the large ones are slow to initialise) for all the CPU checks."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=1)
    assert isinstance(model, ClassifierModel) and model.name == name
    x = small_input(model)
    has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    model.train()
    with torch.no_grad():
        first = outputs(model(x))[0]
    results = outputs(model(x))
    for out in results:
        assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert has_dropout != torch.equal(first, results[0]), (
        "train mode is random exactly with dropout"
    )
    assert all(int(m.num_batches_tracked) == 2 for m in norms)
    sum(out.sum() for out in results).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"

    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
        assert torch.equal(logits, model(x)), "eval mode must be deterministic"
        assert all(int(m.num_batches_tracked) == 2 for m in norms), "eval must not update stats"
        # Eval-mode BatchNorm uses running statistics: one image scores the same alone.
        torch.testing.assert_close(model(x[:1]), logits[:1], rtol=1e-4, atol=1e-4)
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_input_below_minimum_is_refused_by_name(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=3, in_channels=1)
    height, width = model.default_cfg.min_input_size
    with pytest.raises(InputShapeError) as error:
        model(torch.zeros(1, 1, height - 1, width, device="meta"))
    assert name in str(error.value) and f"{height}x{width}" in str(error.value)
    with pytest.raises(InputShapeError, match="input channel"):
        model(torch.zeros(1, 3, height, width, device="meta"))


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier_and_headless(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=3, in_channels=1).eval()
        x = torch.zeros(2, *model.default_cfg.input_size, device="meta")
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        headless = create_model(name, num_classes=0, in_channels=1).eval()
        assert headless(x).shape == (2, headless.num_features)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="resnet18"):
        create_model("resnet-18")


def test_unknown_option_lists_accepted_options():
    with pytest.raises(UnknownModelError, match="width_multiplier"):
        create_model("vgg11", width_multiplyer=0.5)


def test_bad_class_count_is_refused():
    with pytest.raises(UnknownModelError, match="num_classes"):
        create_model("lenet", num_classes=-1)
