"""Layer-by-layer summary of a model: output shapes, parameters, MACs, receptive field and jump.

The model runs once on the `meta` device (no weights allocated, no arithmetic), so even the
largest networks summarise in seconds. The model is left as it was found: its weights, the
train/eval mode of each module and its hooks are untouched afterwards.

A MAC is one multiply-accumulate of a convolution or linear layer, counted per image
(1 MAC = 2 FLOPs); BatchNorm, activations, pooling and additions are not counted.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cnnlab.analysis.receptive_field import Field, FieldTracker, check_fits, layer_field
from cnnlab.errors import InputShapeError
from cnnlab.models import create_model

MAC_NOTE = (
    "MACs: multiply-accumulates of convolutions and linear layers per image (1 MAC = 2 FLOPs)"
)


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int] | None  # per image (no batch dimension); None if it did not run
    params: int
    macs: int
    receptive_field: list[int] | None  # [height, width] in input pixels
    jump: list[float] | None  # [height, width]: input pixels between adjacent outputs


@dataclass
class Summary:
    model: str
    input_size: list[int]
    output_shape: list[int]
    total_params: int
    trainable_params: int
    total_macs: int
    receptive_field: list[int]  # of the model's output, [height, width]
    jump: list[float]
    layers: list[LayerRow]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    model: nn.Module | str,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int = 1000,
) -> Summary:
    """Summarise `model` (or a registered model name, built on the meta device) for one image of
    `input_size` (C, H, W); the default is the model's `default_cfg.input_size`."""
    if isinstance(model, str):
        channels = input_size[0] if input_size else 3
        with torch.device("meta"):
            model = create_model(model, num_classes=num_classes, in_channels=channels)
    if input_size is None:
        input_size = model.default_cfg.input_size
    rows, fields, output = _analyse(model, input_size)
    field = fields[""]
    return Summary(
        model=getattr(model, "name", type(model).__name__),
        input_size=list(input_size),
        output_shape=list(output.shape[1:]),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=sum(row.macs for row in rows),
        receptive_field=[_number(field.height.size), _number(field.width.size)],
        jump=[_number(field.height.jump), _number(field.width.jump)],
        layers=rows,
    )


def module_fields(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Field]:
    """The receptive field of every module's output (by module name, in call order) for one
    image of `input_size`; the model is left as it was found."""
    return _analyse(model, input_size)[1]


def _analyse(model: nn.Module, input_size) -> tuple[list[LayerRow], dict[str, Field], torch.Tensor]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        return _trace(model, tuple(input_size))
    except RuntimeError as error:
        name = getattr(model, "name", type(model).__name__)
        shape = "x".join(map(str, input_size))
        raise InputShapeError(
            f"{name} cannot take an input of {shape}: {str(error).splitlines()[0]}"
        ) from None
    finally:
        for module, training in modes.items():
            module.training = training


def _trace(model: nn.Module, input_size: tuple[int, int, int]):
    tracker = FieldTracker()
    rows: dict[nn.Module, LayerRow] = {}
    fields: dict[str, Field] = {}
    names = {module: name for name, module in model.named_modules()}

    def before(module, args):
        check_fits(module, names[module], args[0].shape)

    def after(module, args, output):
        field = _output_field(tracker, module, args, output)
        if field is not None:
            fields.setdefault(names[module], field)
        if not _is_reported(module):
            return
        if module in rows:  # a module called twice: shape and field of its first call
            rows[module].macs += _row(names[module], module, args, output, field).macs
        else:
            rows[module] = _row(names[module], module, args, output, field)

    modules = list(names)
    handles = [m.register_forward_pre_hook(before) for m in modules if _is_reported(m)]
    handles += [m.register_forward_hook(after) for m in modules]
    x = torch.zeros(1, *input_size, device="meta")
    weights = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    try:
        with tracker:
            tracker.set(x, Field.of_input(*input_size[1:]))
            output = _run(model, weights, x)
            output_field = tracker.get(output)
    finally:
        for handle in handles:
            handle.remove()
    reported = [m for m in modules if _is_reported(m)]
    idle = [_idle_row(names[m], m) for m in reported if m not in rows and _own_params(m)]
    fields[""] = output_field
    return [*rows.values(), *idle], fields, output


def _output_field(tracker: FieldTracker, module: nn.Module, args, output) -> Field | None:
    """A layer's output field follows from its geometry; a container's was carried by its ops."""
    if not isinstance(output, torch.Tensor):
        return None
    if next(module.children(), None) is not None:
        return tracker.get(output)
    field = tracker.get(args[0]) if args and isinstance(args[0], torch.Tensor) else None
    if field is None:
        return None
    tracker.set(output, layer_field(module, field, args[0].shape))
    return tracker.get(output)


def _run(model: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Run the model; if it refuses the input size, also name the layer that cannot take it."""
    call = torch.func.functional_call
    try:
        return call(model, weights, (x,))
    except InputShapeError as refusal:
        if not hasattr(model, "check_input"):
            raise
        model.check_input = _accept_any  # shadows the method for one probing run
        try:
            call(model, weights, (x,))
        except InputShapeError as layer_error:
            raise InputShapeError(f"{refusal}: {layer_error}") from None
        except RuntimeError:
            pass
        finally:
            del model.check_input
        raise


def _accept_any(x: torch.Tensor) -> None:
    pass


def _is_reported(module: nn.Module) -> bool:
    if isinstance(module, nn.Identity):  # a placeholder for an absent layer: nothing to report
        return False
    return next(module.children(), None) is None or _own_params(module) > 0


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _row(name, module, args, output, field: Field | None) -> LayerRow:
    tensor = output if isinstance(output, torch.Tensor) else None
    return LayerRow(
        name=name,
        type=type(module).__name__,
        output_shape=list(tensor.shape[1:]) if tensor is not None else None,
        params=_own_params(module),
        macs=_macs(module, tensor) if tensor is not None else 0,
        receptive_field=[_number(field.height.size), _number(field.width.size)] if field else None,
        jump=[_number(field.height.jump), _number(field.width.jump)] if field else None,
    )


def _idle_row(name: str, module: nn.Module) -> LayerRow:
    return LayerRow(name, type(module).__name__, None, _own_params(module), 0, None, None)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


def format_summary(summary: Summary) -> str:
    """The summary as a table, one row per layer, then the totals."""
    header = ("Layer", "Type", "Output shape", "Params", "MACs", "RF", "Jump")
    lines = [
        (
            row.name,
            row.type,
            "x".join(map(str, row.output_shape)) if row.output_shape else "(not run)",
            f"{row.params:,}",
            f"{row.macs:,}",
            _pair_text(row.receptive_field),
            _pair_text(row.jump),
        )
        for row in summary.layers
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = [
        f"{summary.model}: input {'x'.join(map(str, summary.input_size))}, "
        f"output {'x'.join(map(str, summary.output_shape))}",
        _align(header, widths),
        _align(["-" * w for w in widths], widths),
        *(_align(cells, widths) for cells in lines),
        "",
        f"Total params: {summary.total_params:,} (trainable: {summary.trainable_params:,})",
        f"Total MACs: {summary.total_macs:,} ({_short(summary.total_macs)}MACs = "
        f"{_short(2 * summary.total_macs)}FLOPs)",
        MAC_NOTE,
        "RF: receptive field in input pixels (HxW when not square); Jump: input pixels between "
        "adjacent outputs (effective stride)",
    ]
    return "\n".join(text)


def _pair_text(pair: list | None) -> str:
    if pair is None:
        return "-"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _align(cells, widths) -> str:
    left = {0, 1, 2}
    return "  ".join(
        cell.ljust(width) if i in left else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def _short(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} "
