"""Explain topic 3, output size and parameter count: every conv, pool and linear layer of a zoo
model checked against the CS231n formulas. The zoo model is built on the meta device (shapes
without arithmetic). Its helpers for dissecting zoo models serve `receptive_field` too.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cnnlab.analysis import summarize
from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.models import create_model

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def shape_text(pair) -> str:
    """A size or shape as it is written: (3, 224, 224) -> "3x224x224"."""
    return "x".join(map(str, pair))


def meta_model(name: str, in_channels: int = 3) -> nn.Module:
    """Zoo model `name` on the meta device: every shape, no weights in memory."""
    with torch.device("meta"):
        return create_model(name, in_channels=in_channels)


def _layer_inputs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape (no batch) of every conv, pool and linear layer at its first call."""
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module, args):
        shapes.setdefault(names[module], tuple(args[0].shape[1:]))

    kinds = (nn.Conv2d, *POOLS, nn.Linear)
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
    if isinstance(module, NORMS):
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
    shown = f"{actual:,}" if isinstance(actual, int) else shape_text(actual)
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
    model = meta_model(name)
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
        f"{name} at {shape_text(design)}: output width per conv/pool layer",
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
            for kind in (nn.Conv2d, POOLS, nn.Linear)
        ],
        "total_params_formula": formula_total,
        "total_params_model": main["total"],
        "examples": {
            "first conv output size": _example(main["shapes"], nn.Conv2d),
            "first conv params": _example(main["params"], nn.Conv2d),
            "first pool output size": _example(main["shapes"], POOLS),
            "first linear params": _example(main["params"], nn.Linear),
        },
    }
    verdict = (
        f"{numbers['shapes_checked']} conv/pool/linear output shapes of {name} at "
        f"{', '.join(map(shape_text, sizes))}: {numbers['shape_mismatches']} "
        f"differ from the formula (e.g. {numbers['examples']['first conv output size']}); "
        f"{numbers['params_checked']} parameter counts: {numbers['param_mismatches']} differ "
        f"(e.g. {numbers['examples']['first conv params']}). Total parameters: "
        f"{formula_total:,} by formula, {main['total']:,} in the model."
    )
    wrong = numbers["shape_mismatches"] + numbers["param_mismatches"]
    return Finding(numbers, wrong == 0 and formula_total == main["total"], verdict, figures)
