"""Explain topics about the geometry of a CNN: output sizes and parameter counts (topic 3)
and receptive fields (topic 4). Pooling and translation (topic 7) lives in `pooling`.

Zoo models are dissected on the meta device (shapes without arithmetic) or, where a gradient
has to be measured, as float64 CPU copies that hold only the layers that run.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cnnlab.analysis import summarize
from cnnlab.analysis.summary import module_fields
from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, at_least, topic
from cnnlab.models import create_model

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _by(pair) -> str:
    return "x".join(map(str, pair))


def _meta_model(name: str, in_channels: int = 3) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, in_channels=in_channels)


# Topic 3: output size and parameter count ----------------------------------------------------


def _layer_inputs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape (no batch) of every conv, pool and linear layer at its first call."""
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module, args):
        shapes.setdefault(names[module], tuple(args[0].shape[1:]))

    kinds = (nn.Conv2d, *_POOLS, nn.Linear)
    handles = [m.register_forward_pre_hook(record) for m in names if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _size_formula(module: nn.Module, size: int, axis: int) -> tuple[int, str]:
    """(W - F + 2P)/S + 1, floored (ceiled in ceil_mode), with F = D(F-1)+1 when dilated."""
    kernel = _pair(module.kernel_size)[axis]
    stride = _pair(module.stride or module.kernel_size)[axis]
    dilation = _pair(getattr(module, "dilation", 1))[axis]
    padding = module.padding
    if isinstance(padding, str):  # "same" pads D(F-1) in all, "valid" nothing
        padding = dilation * (kernel - 1) / 2 if padding == "same" else 0
    else:
        padding = _pair(padding)[axis]
    span = dilation * (kernel - 1) + 1
    exact = (size - span + 2 * padding) / stride + 1
    ceil = getattr(module, "ceil_mode", False)
    out = math.ceil(exact) if ceil else math.floor(exact)
    # PyTorch (like Caffe) drops a ceil_mode window that would start inside the right padding.
    if ceil and (out - 1) * stride >= size + padding:
        out -= 1
    rounding = "ceil" if ceil else "floor"
    return out, f"({size} - {span} + 2*{padding:g})/{stride} + 1 = {exact:g}, {rounding} {out}"


def _shape_formula(module: nn.Module, shape: tuple[int, ...]) -> tuple[list[int], str]:
    if isinstance(module, nn.Linear):
        return [*shape[:-1], module.out_features], f"{module.out_features} outputs"
    height, text = _size_formula(module, shape[-2], 0)
    width, _ = _size_formula(module, shape[-1], 1)
    channels = module.out_channels if isinstance(module, nn.Conv2d) else shape[0]
    return [channels, height, width], text


def _param_formula(module: nn.Module) -> tuple[int, str] | None:
    """F x F x C_in/groups x C_out (+ C_out), in x out (+ out), or 2C for a BatchNorm."""
    if isinstance(module, nn.Conv2d):
        (kh, kw), c_in, c_out = module.kernel_size, module.in_channels, module.out_channels
        bias = c_out if module.bias is not None else 0
        count = kh * kw * (c_in // module.groups) * c_out + bias
        fan_in = f"({c_in}/{module.groups})" if module.groups > 1 else f"{c_in}"
        return count, f"{kh}*{kw}*{fan_in}*{c_out} + {bias} = {count:,}"
    if isinstance(module, nn.Linear):
        bias = module.out_features if module.bias is not None else 0
        count = module.in_features * module.out_features + bias
        return count, f"{module.in_features}*{module.out_features} + {bias} = {count:,}"
    if isinstance(module, _NORMS):
        count = 2 * module.num_features if module.affine else 0
        return count, f"2*{module.num_features} = {count:,}"
    return None


def _check_model(model: nn.Module, input_size: tuple[int, ...]) -> dict:
    """Every layer's output shape and parameter count by formula, against summarize's rows:
    records (name, module, by formula, in the model, the formula with numbers substituted)."""
    summary = summarize(model, input_size)
    rows = {row.name: row for row in summary.layers}
    inputs = _layer_inputs(model, input_size)
    shapes, params = [], []
    for name, module in model.named_modules():
        if name in inputs:
            predicted, text = _shape_formula(module, inputs[name])
            shapes.append((name, module, predicted, rows[name].output_shape, text))
        formula = _param_formula(module)
        if formula or any(True for _ in module.parameters(recurse=False)):
            count, text = formula or (0, "no formula for this layer type")
            params.append((name, module, count, rows[name].params, text))
    wrong = sum(r[2] != r[3] for r in shapes), sum(r[2] != r[3] for r in params)
    return {"total": summary.total_params, "shapes": shapes, "params": params, "wrong": wrong}


def _example(records: list, kind) -> str:
    name, _, _, actual, text = next((r for r in records if isinstance(r[1], kind)), [None] * 5)
    if name is None:
        return "none in this model"
    shown = f"{actual:,}" if isinstance(actual, int) else _by(actual)
    return f"{name}: {text} (model: {shown})"


@topic(
    3,
    "output-size",
    "Output size and parameter count",
    "A conv or pool layer outputs floor((W - F + 2P)/S) + 1 positions per side, and a conv "
    "has F x F x C_in x C_out weights plus C_out biases.",
    """The output size of a convolution or pooling layer follows from its input size W, kernel
    F, stride S and padding P alone, and its parameter count from F, the channels and the
    groups (the CS231n formulas; AlexNet, Krizhevsky et al. 2012, is the classic worked
    example). The experiment walks a zoo model (--model, default alexnet at its design input;
    the full run also at its minimum input and at an odd size), computes every conv, pool and
    linear layer's output shape and every layer's parameters (2C for a BatchNorm) from its
    hyperparameters, and compares them with what the model produces (cnnlab.analysis.summarize
    on the meta device) and with its total parameter count.""",
)
def output_size(ctx: Context) -> Finding:
    name = ctx.model or "alexnet"
    model = _meta_model(name)
    design = tuple(model.default_cfg.input_size)
    sizes = [design]
    if not ctx.quick:  # the smallest input and an odd one put the rounding to work
        low = model.default_cfg.min_input_size
        sizes += [(design[0], *low), (design[0], design[1] + 3, design[2] + 3)]
    checks = [_check_model(model, size) for size in sizes]
    main = checks[0]
    formula_total = sum(r[2] for r in main["params"])
    spatial = [r for r in main["shapes"] if not isinstance(r[1], nn.Linear)]
    depth = list(range(1, len(spatial) + 1))
    figures = save_curves(
        ctx.figure_path("sizes"),
        {
            "formula (W - F + 2P)/S + 1": (depth, [r[2][-1] for r in spatial]),
            "model (summarize)": (depth, [r[3][-1] for r in spatial]),
        },
        f"{name} at {_by(design)}: output width per conv/pool layer",
        "conv/pool layer (call order)",
        "output width (pixels)",
    )
    numbers = {
        "model": name,
        "input_sizes": [list(size) for size in sizes],
        "shapes_checked": sum(len(c["shapes"]) for c in checks),
        "shape_mismatches": sum(c["wrong"][0] for c in checks),
        "params_checked": sum(len(c["params"]) for c in checks),
        "param_mismatches": sum(c["wrong"][1] for c in checks),
        "conv_pool_linear_layers": [
            sum(isinstance(r[1], kind) for r in main["shapes"])
            for kind in (nn.Conv2d, _POOLS, nn.Linear)
        ],
        "total_params_formula": formula_total,
        "total_params_model": main["total"],
        "examples": {
            "first conv output size": _example(main["shapes"], nn.Conv2d),
            "first conv params": _example(main["params"], nn.Conv2d),
            "first pool output size": _example(main["shapes"], _POOLS),
            "first linear params": _example(main["params"], nn.Linear),
        },
    }
    verdict = (
        f"{numbers['shapes_checked']} conv/pool/linear output shapes of {name} at "
        f"{', '.join(map(_by, sizes))}: {numbers['shape_mismatches']} "
        f"differ from the formula (e.g. {numbers['examples']['first conv output size']}); "
        f"{numbers['params_checked']} parameter counts: {numbers['param_mismatches']} differ "
        f"(e.g. {numbers['examples']['first conv params']}). Total parameters: "
        f"{formula_total:,} by formula, {main['total']:,} in the model."
    )
    wrong = numbers["shape_mismatches"] + numbers["param_mismatches"]
    return Finding(numbers, wrong == 0 and formula_total == main["total"], verdict, figures)


# Topic 4: receptive fields -------------------------------------------------------------------


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
            elif isinstance(module, _NORMS):
                module.reset_parameters()


def _gradient_model(name: str, generator: torch.Generator) -> nn.Module:
    """Zoo model `name` (one input channel) in float64 on the CPU with positive weights, and
    with every max pool replaced by an average pool of the same geometry: a max routes the
    gradient to one pixel per window, an average to all of them. Linear layers stay on the
    meta device: they only come after the layers measured (a hook stops the pass before
    them), and VGG's would take 1 GB in float64."""
    model = _meta_model(name, in_channels=1)
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
    meta = _meta_model(name, in_channels=1)
    modules = dict(meta.named_modules())
    fields = module_fields(meta, (1, *meta.default_cfg.input_size[1:]))
    spatial = [n for n in fields if isinstance(modules.get(n), (nn.Conv2d, *_POOLS))]
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
        f"Measured by input gradients, three 3x3 convs see {_by(stack['measured_rf'])} and one "
        f"7x7 conv sees {_by(single['measured_rf'])}, with {stack['weights']:,} "
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
