"""FC-to-conv conversion: same logits at the training size, score maps on larger inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.analysis import to_fully_convolutional
from cnnlab.errors import CnnlabError, InputShapeError
from cnnlab.models import create_model


def randomise(model: nn.Module) -> nn.Module:
    """Weights and BatchNorm statistics of order 1, so equal logits mean something."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def small_vgg(name: str = "vgg11", **options) -> nn.Module:
    model = create_model(name, 10, 1, width_multiplier=1 / 16, scale_classifier=True, **options)
    return randomise(model)


def build_on_meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def meta_input(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta")


@pytest.mark.parametrize("name", ["vgg11", "vgg13_bn"])
def test_vgg_same_logits_at_training_size(name):
    model = small_vgg(name)
    converted = to_fully_convolutional(model)
    x = torch.randn(2, 1, 224, 224)
    scores = converted(x)
    assert scores.shape == (2, 10, 1, 1)
    torch.testing.assert_close(scores.flatten(1), model(x), rtol=1e-5, atol=1e-5)


def test_vgg_score_map_on_larger_input():
    converted = to_fully_convolutional(small_vgg())
    # 288 / 32 = 9 pixels before the 7x7 conv: a 3x3 map, one score vector per 224 window.
    assert converted(torch.randn(1, 1, 288, 288)).shape == (1, 10, 3, 3)


def test_vgg16_at_384_gives_a_6x6_map():
    converted = to_fully_convolutional(build_on_meta("vgg16"))
    assert converted.name == "vgg16 (fully convolutional)"
    assert converted(meta_input(2, 3, 224, 224)).shape == (2, 1000, 1, 1)
    assert converted(meta_input(2, 3, 384, 384)).shape == (2, 1000, 6, 6)  # 384/32 - 7 + 1
    assert converted(meta_input(1, 3, 384, 256)).shape == (1, 1000, 6, 2)


def test_fc_layers_become_convolutions():
    converted = to_fully_convolutional(build_on_meta("vgg16_bn"))
    assert not any(isinstance(m, (nn.Linear, nn.AdaptiveAvgPool2d)) for m in converted.modules())
    convs = [m for m in converted.hidden if isinstance(m, nn.Conv2d)] + [converted.fc]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (512, 4096, (7, 7)),
        (4096, 4096, (1, 1)),
        (4096, 1000, (1, 1)),
    ]
    assert sum(isinstance(m, nn.Dropout) for m in converted.modules()) == 2
    assert sum(p.numel() for p in converted.parameters()) == 138_365_992  # vgg16_bn's count


def test_alexnet_same_logits_and_score_map():
    model = randomise(create_model("alexnet", num_classes=10))
    converted = to_fully_convolutional(model)
    assert converted.hidden[1].kernel_size == (6, 6)  # after the first dropout
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(converted(x).flatten(1), model(x), rtol=1e-5, atol=1e-5)
    # 255: first conv 63, pools 31, 15, 7, and the 6x6 conv leaves 2x2.
    with torch.device("meta"):
        on_meta = to_fully_convolutional(create_model("alexnet"))
    assert on_meta(meta_input(1, 3, 255, 255)).shape == (1, 1000, 2, 2)


@pytest.mark.parametrize("name", ["lenet", "lenet_bn", "lenet_modern"])
def test_lenet_same_logits_and_score_map(name):
    model = randomise(create_model(name, num_classes=10, in_channels=1))
    converted = to_fully_convolutional(model)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(converted(x).flatten(1), model(x), rtol=1e-5, atol=1e-5)
    # 36: conv 36, pool 18, conv 14, pool 7, and the 5x5 conv leaves 3x3.
    assert converted(torch.randn(2, 1, 36, 36)).shape == (2, 10, 3, 3)


def test_batch_norm_keeps_its_statistics():
    model = randomise(create_model("lenet_bn", num_classes=10))
    converted = to_fully_convolutional(model)
    old = [m for m in model.hidden if isinstance(m, nn.BatchNorm1d)]
    new = [m for m in converted.hidden if isinstance(m, nn.BatchNorm2d)]
    assert len(old) == len(new) == 2
    for before, after in zip(old, new, strict=True):
        for key, value in before.state_dict().items():
            assert torch.equal(after.state_dict()[key], value), key
        assert after.eps == before.eps and after.momentum == before.momentum


def test_original_untouched_and_weights_not_shared():
    model = small_vgg()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    converted = to_fully_convolutional(model)
    with torch.no_grad():
        for p in converted.parameters():
            p.zero_()
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert isinstance(model.fc, nn.Linear) and isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_training_mode_and_dropout_carry_over():
    model = small_vgg().train()
    converted = to_fully_convolutional(model)
    assert converted.training
    x = torch.randn(2, 1, 224, 224)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)  # the same dropout masks: dropout runs on the same number of values
    torch.testing.assert_close(converted(x).flatten(1), expected, rtol=1e-5, atol=1e-5)
    assert not to_fully_convolutional(model.eval()).training


def test_minimum_input_is_where_the_first_conv_still_fits():
    vgg = to_fully_convolutional(build_on_meta("vgg16"))
    alexnet = to_fully_convolutional(build_on_meta("alexnet"))
    lenet = to_fully_convolutional(build_on_meta("lenet"))
    # VGG: 224 // 32 = 7 but 223 // 32 = 6. AlexNet: (223 - 7) // 4 + 1 = 55 -> 27 -> 13 -> 6.
    for model, size in ((vgg, 224), (alexnet, 223), (lenet, 28)):
        assert model.default_cfg.min_input_size == (size, size)
        channels = model.in_channels
        assert model(meta_input(1, channels, size, size)).shape[-2:] == (1, 1)
        with pytest.raises(InputShapeError, match=rf"{size}x{size}.*{size - 1}x{size - 1}"):
            model(meta_input(1, channels, size - 1, size - 1))


def test_without_classifier_returns_hidden_maps():
    model = randomise(create_model("lenet", num_classes=0))
    converted = to_fully_convolutional(model)
    x = torch.randn(2, 3, 28, 28)
    assert converted(x).shape == (2, 84, 1, 1)
    torch.testing.assert_close(converted(x).flatten(1), model(x), rtol=1e-5, atol=1e-5)
    converted.reset_classifier(7)
    assert converted(x).shape == (2, 7, 1, 1)


def test_other_models_are_refused_by_name():
    with pytest.raises(CnnlabError, match=r"nin.*alexnet.*vgg16.*lenet"):
        to_fully_convolutional(build_on_meta("nin"))
    with pytest.raises(CnnlabError, match="Sequential"):
        to_fully_convolutional(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
