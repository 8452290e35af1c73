"""Explain topic 4, receptive fields: three stacked 3x3 convs against one 7x7 conv, and the
analytic field of every layer of a zoo model against the field measured by input gradients. The
zoo model is measured as a float64 CPU copy that holds only the layers that run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.analysis.summary import module_fields
from cnnlab.explain.figures import save_curves
from cnnlab.explain.output_size import NORMS, POOLS, meta_model, shape_text
from cnnlab.explain.topic import Context, Finding, at_least, topic


class _Stop(Exception):
    """Raised by a hook once the deepest measured layer has run: the rest is not needed."""


def _positive_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Conv weights in [0.5, 1.5] / fan-in, zero biases, BatchNorm at its identity start: with
    a positive input every activation is positive (every ReLU passes) and every path from an
    input pixel to a unit adds a positive term, so no gradient cancels to zero."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                weight = torch.rand(module.weight.shape, generator=generator, dtype=torch.float64)
                module.weight.copy_((weight + 0.5) / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, NORMS):
                module.reset_parameters()


def _gradient_model(name: str, generator: torch.Generator) -> nn.Module:
    """Zoo model `name` (one input channel) in float64 on the CPU with positive weights, and
    with every max pool replaced by an average pool of the same geometry: a max routes the
    gradient to one pixel per window, an average to all of them. Linear layers stay on the
    meta device: they only come after the layers measured (a hook stops the pass before
    them), and VGG's would take 1 GB in float64."""
    model = meta_model(name, in_channels=1)
    for parent in list(model.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(parent, key, pool)
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            module.to_empty(device="cpu", recurse=False)
    model.double().eval().requires_grad_(False)
    _positive_weights(model, generator)
    return model


def _support(unit: torch.Tensor, x: torch.Tensor) -> tuple[list[int], list[int], float]:
    """Rows and columns [first, last] of the input pixels with a non-zero gradient of `unit`,
    and the fraction of that rectangle they fill. `unit` sums the channels at one position:
    the field of a position is the union over its channels (concatenated Inception branches
    see different patches)."""
    (gradient,) = torch.autograd.grad(unit, x, retain_graph=True)
    seen = gradient[0].abs().sum(0) > 0
    rows = torch.nonzero(seen.any(1)).flatten().tolist()
    cols = torch.nonzero(seen.any(0)).flatten().tolist()
    if not rows:  # a dead unit: an empty field, which no analytic field matches
        return [0, -1], [0, -1], 0.0
    area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return [rows[0], rows[-1]], [cols[0], cols[-1]], seen.sum().item() / area


def _window(span, i: int) -> list[int]:
    """Input pixels [first, last] that output position i sees (cnnlab.analysis's Span)."""
    return [int(i * span.jump + span.lo), int(i * span.jump + span.hi)]


def _centre_unit(span, size: int, image: int) -> int | None:
    """The output position nearest the middle whose whole window lies inside the image, where
    no padding clips it."""
    inside = [i for i in range(size) if _window(span, i)[0] >= 0 and _window(span, i)[1] < image]
    return min(inside, key=lambda i: abs(i - (size - 1) / 2)) if inside else None


def _needed_input(field) -> int:
    """The smallest image in which some unit's whole receptive field fits."""
    spans = (field.height, field.width)
    return max(_window(s, max(0, math.ceil(-s.lo / s.jump)))[1] + 1 for s in spans)


def _stack_vs_single(ctx: Context, channels: int) -> dict[str, dict]:
    """Three 3x3 convs (with ReLUs) and one 7x7 conv: weights counted, field measured."""
    generator = ctx.manual_seed(1)
    convs = [nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(3)]
    stack = nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2])
    single = nn.Conv2d(channels, channels, 7, padding=3, bias=False)
    result = {}
    for label, model in (("three_3x3", stack.double()), ("one_7x7", single.double())):
        _positive_weights(model, generator)
        x = torch.rand(1, channels, 21, 21, generator=generator, dtype=torch.float64)
        x = x.add_(0.5).requires_grad_()
        rows, cols, fill = _support(model(x)[0, :, 10, 10].sum(), x)
        rf = [rows[1] - rows[0] + 1, cols[1] - cols[0] + 1]
        weights = sum(p.numel() for p in model.parameters())
        result[label] = {"weights": weights, "measured_rf": rf, "filled": fill}
    return result


def _spread(names: list[str], count: int) -> list[str]:
    """`count` names evenly spaced through the list, the first and the last included."""
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def _outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of layers `names` (in call order), stopping the pass after the last."""
    layers = dict(model.named_modules())
    outputs = {}

    def keep(name, output):
        outputs[name] = output
        if name == names[-1]:
            raise _Stop

    hooks = [layers[n].register_forward_hook(lambda m, a, out, n=n: keep(n, out)) for n in names]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _measure_model(ctx: Context, name: str) -> dict:
    """Analytic field of every conv/pool layer; measured field of a spread of them, each at a
    unit whose whole field lies inside an image just big enough for the deepest one."""
    meta = meta_model(name, in_channels=1)
    modules = dict(meta.named_modules())
    fields = module_fields(meta, (1, *meta.default_cfg.input_size[1:]))
    spatial = [n for n in fields if isinstance(modules.get(n), (nn.Conv2d, *POOLS))]
    budget = 128 if ctx.quick else 320  # image side: the float64 passes grow with its square
    fitting = [n for n in spatial if _needed_input(fields[n]) <= budget]
    chosen = _spread(fitting, 4 if ctx.quick else 16) or spatial[:1]
    image = max(*meta.default_cfg.min_input_size, *(_needed_input(fields[n]) for n in chosen))
    generator = ctx.manual_seed(2)
    model = _gradient_model(name, generator)
    x = torch.rand(1, 1, image, image, generator=generator, dtype=torch.float64)
    x = x.add_(0.5).requires_grad_()
    measured, skipped = {}, []
    for n, out in _outputs(model, x, chosen).items():
        field = fields[n]
        i = _centre_unit(field.height, out.shape[-2], image)
        j = _centre_unit(field.width, out.shape[-1], image)
        if i is None or j is None:
            skipped.append(n)
            continue
        rows, cols, fill = _support(out[0, :, i, j].sum(), x)
        agrees = [rows, cols] == [_window(field.height, i), _window(field.width, j)]
        measured[n] = {"rf": rows[1] - rows[0] + 1, "fill": fill, "agrees": agrees}
    analytic = [int(fields[n].height.size) for n in spatial]
    return {
        "analytic": analytic,
        "spatial": spatial,
        "measured": measured,
        "skipped": skipped,
        "image": image,
    }


@topic(
    4,
    "receptive-field",
    "Receptive fields",
    "Three stacked 3x3 convs see a 7x7 patch, like one 7x7 conv, with 27C^2 instead of 49C^2 "
    "weights; the receptive field grows layer by layer as the geometry predicts.",
    """A unit's receptive field is the patch of input pixels it depends on. Stacking 3x3
    convolutions grows it by 2 pixels per layer, so three of them see 7x7 like one 7x7 conv,
    with 27C^2 instead of 49C^2 weights and two more nonlinearities (Simonyan & Zisserman, VGG,
    2015); strides and pools multiply the growth (the recursion of Araujo et al., Distill 2019,
    which cnnlab.analysis computes). The experiment measures fields as the input pixels with a
    non-zero gradient of one output position (summed over its channels). So that no path is
    lost, every weight is positive (nothing cancels, every ReLU is open), max pools become
    average pools of the same geometry (a max routes the gradient to one pixel per window), the
    arithmetic is float64 (edge gradients are tiny) and the position is one whose whole field
    lies inside the image (no padding clips it). It does this for the 3x3 stack and the 7x7
    conv (C = 64) and for a spread of the conv and pool layers of a zoo model (--model, default
    vgg11).""",
)
def receptive_field(ctx: Context) -> Finding:
    channels = 64
    pair = _stack_vs_single(ctx, channels)
    stack, single = pair["three_3x3"], pair["one_7x7"]
    name = ctx.model or "vgg11"
    result = _measure_model(ctx, name)
    measured = result["measured"]
    depth = {n: k + 1 for k, n in enumerate(result["spatial"])}
    figures = save_curves(
        ctx.figure_path("growth"),
        {
            "analytic (cnnlab.analysis)": (list(depth.values()), result["analytic"]),
            "measured (input gradient)": (
                [depth[n] for n in measured],
                [m["rf"] for m in measured.values()],
            ),
        },
        f"{name}: receptive field per conv/pool layer",
        "conv/pool layer (call order)",
        "receptive field (pixels)",
    )
    agree = sum(m["agrees"] for m in measured.values())
    fill = min((m["fill"] for m in measured.values()), default=0.0)
    seven = 1 + 3 * (3 - 1)  # each 3x3 layer adds 2 pixels
    same_field = stack["measured_rf"] == single["measured_rf"] == [seven, seven]
    counted = stack["weights"] == 27 * channels**2 and single["weights"] == 49 * channels**2
    full = min(stack["filled"], single["filled"], fill) == 1.0
    everywhere = len(measured) >= 2 and agree == len(measured) and not result["skipped"]
    deepest = list(measured)[-1] if measured else "none"
    verdict = (
        f"Measured by input gradients, three 3x3 convs see {shape_text(stack['measured_rf'])} "
        f"and one 7x7 conv sees {shape_text(single['measured_rf'])}, with {stack['weights']:,} "
        f"vs {single['weights']:,} weights at C = {channels} "
        f"({stack['weights'] / channels**2:g}C^2 vs {single['weights'] / channels**2:g}C^2). In "
        f"{name} on a {result['image']}x{result['image']} image, {agree} of {len(measured)} "
        f"measured layers (deepest {deepest}, {measured.get(deepest, {}).get('rf', 0)} pixels) "
        f"match the analytic field in size and position, {len(result['skipped'])} could not be "
        f"measured, and the non-zero gradients cover {at_least(fill)} of each field's pixels."
    )
    return Finding(
        numbers={
            "channels": channels,
            "stack_3x3": stack,
            "single_7x7": single,
            "weight_ratio": stack["weights"] / single["weights"],
            "model": name,
            "image_size": result["image"],
            "layers_measured": list(measured),
            "measured_rf": [m["rf"] for m in measured.values()],
            "analytic_rf": [result["analytic"][depth[n] - 1] for n in measured],
            "mismatches": len(measured) - agree,
            "not_measurable": result["skipped"],
            "min_filled_fraction": fill,
            "analytic_rf_all_layers": result["analytic"][:50],
        },
        holds=same_field and counted and full and everywhere,
        verdict=verdict,
        figures=figures,
    )
