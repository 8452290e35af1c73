"""Receptive field and jump of every tensor in a forward pass, computed from layer geometry.

Per spatial dimension a tensor carries a `Span(lo, hi, jump)`: output position i sees input pixels
i * jump + lo through i * jump + hi, so the receptive field is hi - lo + 1 and `jump` is the
effective stride (Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019). A conv or pooling layer with kernel F, stride S, padding P and dilation D maps
(lo, hi, J) to (lo - P*J, hi + (D*(F-1) - P)*J, S*J). A merge of branches (residual
addition, Inception or DenseNet concatenation) covers the union of its inputs' spans, so its
receptive field is the largest over its inputs. A linear layer after a flatten, and a global
pool, see the whole map.

`FieldTracker` is a torch function mode: every op passes its inputs' spans on to its
outputs, and module hooks (see summary.py) overwrite them with the geometry of convolution and
pooling layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnlab.errors import InputShapeError

SPATIAL_LAYERS = (
    nn.Conv2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


@dataclass(frozen=True)
class Span:
    """Input pixels seen by output position i, along one dimension: [i*jump + lo, i*jump + hi]."""

    lo: float
    hi: float
    jump: float

    @property
    def size(self) -> float:
        return self.hi - self.lo + 1

    def window(self, kernel: int, stride: float, padding: int, dilation: int = 1) -> Span:
        reach = dilation * (kernel - 1)
        return Span(
            self.lo - padding * self.jump,
            self.hi + (reach - padding) * self.jump,
            stride * self.jump,
        )

    def union(self, other: Span) -> Span:
        return Span(min(self.lo, other.lo), max(self.hi, other.hi), max(self.jump, other.jump))


@dataclass(frozen=True)
class Field:
    """The spans of a tensor along height and width, and the spatial size of the map it came from
    (kept through a flatten so that a linear layer knows how much it sees)."""

    height: Span
    width: Span
    map_size: tuple[int, int]

    @staticmethod
    def of_input(height: int, width: int) -> Field:
        return Field(Span(0, 0, 1), Span(0, 0, 1), (height, width))

    def union(self, other: Field) -> Field:
        return Field(self.height.union(other.height), self.width.union(other.width), self.map_size)


class FieldTracker(TorchFunctionMode):
    """Carries a `Field` along every tensor op: an op's outputs get the union of its inputs'."""

    def __init__(self):
        super().__init__()
        self._fields: dict[int, tuple[torch.Tensor, Field]] = {}

    def get(self, tensor: torch.Tensor) -> Field | None:
        entry = self._fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def set(self, tensor: torch.Tensor, field: Field) -> None:
        if tensor.dim() == 4:
            field = Field(field.height, field.width, tuple(tensor.shape[-2:]))
        # Holding the tensor keeps its id from being reused by another tensor.
        self._fields[id(tensor)] = (tensor, field)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs, _ = tree_flatten((args, kwargs))
        fields = [self.get(t) for t in inputs if isinstance(t, torch.Tensor)]
        fields = [f for f in fields if f is not None]
        if fields:
            merged = fields[0]
            for field in fields[1:]:
                merged = merged.union(field)
            outputs, _ = tree_flatten(out)
            for tensor in outputs:
                if isinstance(tensor, torch.Tensor):
                    self.set(tensor, merged)
        return out


def layer_field(module: nn.Module, field: Field, input_shape: torch.Size) -> Field:
    """The field after `module`, given the field of its input."""
    if isinstance(module, nn.Linear):
        if len(input_shape) == 4:  # a 1x1 conv in disguise: sees what its input saw
            return field
        rows, cols = field.map_size
        return Field(field.height.window(rows, rows, 0), field.width.window(cols, cols, 0), (1, 1))
    if not isinstance(module, SPATIAL_LAYERS):
        return field
    spans = []
    for axis, span in enumerate((field.height, field.width)):
        size = input_shape[-2 + axis]
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            target = _pair(module.output_size)[axis] or size
            spans.append(span.window(_adaptive_kernel(size, target), size / target, 0))
        else:
            kernel, stride, padding, dilation = _geometry(module, axis)
            spans.append(span.window(kernel, stride, padding, dilation))
    return Field(spans[0], spans[1], field.map_size)


def check_fits(module: nn.Module, name: str, input_shape: torch.Size) -> None:
    """Refuse an input map too small for a conv or pooling layer, showing the size formula."""
    if isinstance(module, nn.Linear):
        if input_shape[-1] != module.in_features:
            raise InputShapeError(
                f"layer {name} (Linear) expects {module.in_features} input features, got "
                f"{input_shape[-1]} (input shape {tuple(input_shape)})"
            )
        return
    if not isinstance(module, SPATIAL_LAYERS) or isinstance(
        module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    ):
        return
    for axis, label in enumerate(("height", "width")):
        size = input_shape[-2 + axis]
        kernel, stride, padding, dilation = _geometry(module, axis)
        span = dilation * (kernel - 1) + 1
        out = (size - span + 2 * padding) / stride + 1
        rounded = math.ceil(out) if getattr(module, "ceil_mode", False) else math.floor(out)
        if rounded < 1:
            raise InputShapeError(
                f"input does not fit layer {name} ({type(module).__name__}): its {label} is "
                f"{size}, and the output size (W - F + 2P) / S + 1 = "
                f"({size} - {span} + 2*{padding}) / {stride} + 1 = {out:g} is below 1"
            )


def _geometry(module: nn.Module, axis: int) -> tuple[int, int, int, int]:
    kernel = _pair(module.kernel_size)[axis]
    stride = _pair(module.stride or module.kernel_size)[axis]
    dilation = _pair(getattr(module, "dilation", 1))[axis]
    padding = module.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = dilation * (kernel - 1) // 2
    return kernel, stride, _pair(padding)[axis], dilation


def _adaptive_kernel(size: int, target: int) -> int:
    """The widest window of an adaptive pool from `size` to `target` positions."""
    return max(math.ceil((i + 1) * size / target) - (i * size) // target for i in range(target))


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
