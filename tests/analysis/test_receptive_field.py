"""Receptive fields from layer geometry agree with the input gradient of one output unit.

The check uses a copy of the model with positive weights, max pooling swapped for average pooling
of the same geometry (max pooling routes gradient to one input only) and eval-mode BatchNorm, so
every input pixel inside the receptive field gets a non-zero gradient and every pixel outside none.
"""

import copy

import pytest
import torch
from torch import nn

from cnnlab.analysis.summary import module_fields
from cnnlab.models import create_model

CASES = [
    ("lenet", 28, {}),
    ("lenet_modern", 28, {}),
    ("alexnet", 127, {}),
    ("vgg11", 64, {"width_multiplier": 0.125}),
    ("nin", 127, {}),
    ("googlenet", 96, {}),
    ("resnet18", 96, {}),
    ("preact_resnet18", 96, {}),
    ("densenet_d2l", 96, {}),
    ("inception_v3", 107, {"aux_logits": False}),
]


def positive_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).double().eval()
    for child in list(model.modules()):
        for attr, layer in list(child.named_children()):
            if isinstance(layer, nn.MaxPool2d):
                avg = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)
                setattr(child, attr, avg)
            elif isinstance(layer, nn.AdaptiveMaxPool2d):
                setattr(child, attr, nn.AdaptiveAvgPool2d(layer.output_size))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.fill_(0.01)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
                module.reset_running_stats()
                module.bias.fill_(0.01)
    return model


def four_d_outputs(model: nn.Module, size: int) -> set[str]:
    """Names of the modules whose output is an image-like N x C x H x W map."""
    names, handles = set(), []
    for name, module in model.named_modules():
        handles.append(
            module.register_forward_hook(
                lambda m, a, out, name=name: names.add(name) if out.dim() == 4 else None
            )
        )
    model.eval()(torch.zeros(1, 1, size, size))
    for handle in handles:
        handle.remove()
    return names


def span_of(field, row, col):
    """Input rows and columns seen by output position (row, col), before any clipping."""
    h, w = field.height, field.width
    return (row * h.jump + h.lo, row * h.jump + h.hi), (col * w.jump + w.lo, col * w.jump + w.hi)


def deepest_interior_field(model, fields, size):
    """The last module output map whose centre unit sees a region strictly inside the image
    (boundary units also see padding in intermediate maps, so only a subset of their span)."""
    maps = four_d_outputs(model, size)
    candidates = []
    for name, field in fields.items():
        rows, cols = field.map_size
        (top, bottom), (left, right) = span_of(field, rows // 2, cols // 2)
        if name in maps and rows > 1 and top >= 0 and left >= 0 and max(bottom, right) < size:
            candidates.append((name, field))
    return candidates[-1]


def seen_box(probe, module_name, size, row, col):
    """Bounding box of the input pixels with a non-zero gradient of one output unit."""
    captured = {}
    handle = probe.get_submodule(module_name).register_forward_hook(
        lambda m, a, out: captured.setdefault("out", out)
    )
    x = (torch.rand(1, 1, size, size, dtype=torch.float64) + 0.5).requires_grad_()
    probe(x)
    handle.remove()
    # All channels: a concatenation's channels each see only their own branch.
    (grad,) = torch.autograd.grad(captured["out"][0, :, row, col].sum(), x)
    seen = grad[0, 0].abs() > 0
    ys, xs = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    return (ys.min().item(), ys.max().item()), (xs.min().item(), xs.max().item())


@pytest.mark.parametrize(("name", "size", "options"), CASES)
def test_geometry_matches_input_gradient(name, size, options):
    model = create_model(name, num_classes=10, in_channels=1, **options)
    fields = module_fields(model, (1, size, size))
    module_name, field = deepest_interior_field(model, fields, size)
    assert field.height.size > 1, module_name
    probe = positive_copy(model)
    rows, cols = field.map_size
    centre = seen_box(probe, module_name, size, rows // 2, cols // 2)
    assert centre == span_of(field, rows // 2, cols // 2), module_name
    for row, col in [(0, 0), (rows - 1, cols - 1)]:
        (top, bottom), (left, right) = seen_box(probe, module_name, size, row, col)
        (y0, y1), (x0, x1) = span_of(field, row, col)
        assert y0 <= top <= bottom <= y1 and x0 <= left <= right <= x1, (module_name, row, col)


def test_three_3x3_convs_see_as_much_as_one_7x7():
    stack = nn.Sequential(*[nn.Conv2d(1, 1, 3) for _ in range(3)])
    single = nn.Conv2d(1, 1, 7)
    for model in (stack, single):
        field = module_fields(model, (1, 15, 15))[""]
        assert field.height.size == field.width.size == 7
