"""What can go wrong in a training step, caught where it can still be told clearly.

A NaN or infinite loss or gradient is caught before `optimizer.step()` with one host sync per
step (`check_finite`); weights that are no longer finite are found with one more
(`weights_finite`). Running out of device or host memory becomes an `OutOfMemory` that names
the work, the batch size and what to try (`memory_hint`).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from cnnlab.errors import NonFiniteError, OutOfMemory

SKIP_LIMIT = 10  # nonfinite="skip" stops after this many non-finite steps in a row


class NonFiniteStep(NonFiniteError):
    """A training step refused before the weights changed: its `what` ("loss" or "gradients")
    was NaN or infinite."""

    def __init__(self, what: str):
        super().__init__(f"the training {what} became NaN or infinite; the step was not applied")
        self.what = what


def check_finite(loss: torch.Tensor, optimizer, scaler) -> None:
    """Raise NonFiniteStep if the loss or a gradient is NaN or infinite, with one host sync:
    the gradients' largest magnitude (one fused pass) is NaN or infinite exactly when one of
    them is. Under fp16 loss scaling only the loss is checked: gradients overflowing the scale
    are the GradScaler's to skip, and it lowers the scale."""
    values = [loss.detach().float().reshape(1)]
    grads = [
        param.grad
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    ]
    if grads and not scaler.is_enabled():
        values.append(nn.utils.get_total_norm(grads, math.inf).float().reshape(1))
    finite = torch.isfinite(torch.cat(values))
    if not finite.all():
        raise NonFiniteStep("loss" if not finite[0] else "gradients")


def weights_finite(model: nn.Module) -> bool:
    """Whether every weight and buffer (BatchNorm statistics too) is finite; one sync."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.isfinite(nn.utils.get_total_norm(tensors, math.inf)))


def non_finite_error(what: str, last_checkpoint, option: str = "") -> NonFiniteError:
    """The error that stops a diverged run, naming the last good checkpoint (or that none is)."""
    kept = last_checkpoint if last_checkpoint is not None and last_checkpoint.exists() else None
    return NonFiniteError(
        f"{what}; stopped (try a lower --lr, {option}or --clip-grad-norm); no checkpoint was "
        f"written from it: the last good checkpoint is {kept or 'none: no epoch finished'}"
    )


@contextlib.contextmanager
def memory_hint(advice):
    """Running out of device or host memory in the block becomes an OutOfMemory whose message
    is `advice()`; other errors pass unchanged."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not out_of_memory(error):
            raise
        raise OutOfMemory(advice()) from None


def memory_advice(config, model: nn.Module, device: torch.device, doing: str, batch: int) -> str:
    """What ran out of memory (`doing` a batch of `batch` images) and what to try instead."""
    cfg = getattr(model, "default_cfg", None)
    smallest = cfg.min_input_size[0] if cfg is not None else config.resize
    tips = [f"a smaller --batch-size (e.g. {max(1, config.batch_size // 2)})"]
    if config.precision == "fp32":
        tips.append("--precision bf16" + (" or fp16" if device.type == "cuda" else ""))
    if config.resize > smallest:
        tips.append(f"a smaller --resize ({config.model} takes down to {smallest})")
    precision = "auto precision" if config.precision == "auto" else config.precision
    return (
        f"out of {device.type} memory while {doing} on batches of {batch} images of "
        f"{config.resize}x{config.resize} ({precision}); try "
        + (", ".join(tips[:-1]) + " or " + tips[-1] if len(tips) > 1 else tips[0])
    )


def out_of_memory(error: BaseException) -> bool:
    """torch's device out-of-memory error, Python's MemoryError, or the RuntimeError of torch's
    CPU allocator ("DefaultCPUAllocator: can't allocate memory" / "not enough memory")."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return "DefaultCPUAllocator" in text and ("can't allocate" in text or "not enough" in text)
