"""BatchNorm over the global batch of a distributed job, on GPUs and on CPUs.

With `cnnlab train --sync-bn` under torchrun, every BatchNorm layer normalises with the
statistics of the whole global batch rather than of its rank's part, so that training matches a
single process on that batch. On GPUs that is PyTorch's `nn.SyncBatchNorm`. It refuses CPU
tensors, so on CPUs (Gloo) `CpuSyncBatchNorm` does the same: each rank's count, mean and sum of
squared deviations per channel go into one all-reduce per layer and pass and are combined
exactly (Chan, Golub & LeVeque's parallel variance, no E[x^2] - E[x]^2 cancellation), and the
all-reduce is differentiable, so every rank's gradient counts the other ranks' losses through
the shared statistics, as PyTorch's does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def synchronised_norms(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm layer normalising with the statistics of the global batch;
    parameters and buffers stay the same objects, state_dict keys the same names."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _cpu_synchronised(model)


def _cpu_synchronised(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(
        module, (nn.SyncBatchNorm, CpuSyncBatchNorm)
    ):
        return CpuSyncBatchNorm.replacing(module)
    for name, child in module.named_children():
        module.add_module(name, _cpu_synchronised(child))
    return module


class SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced (summed) gradient."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch over all ranks; in eval mode,
    or outside a process group, plain BatchNorm."""

    @classmethod
    def replacing(cls, norm: _BatchNorm) -> CpuSyncBatchNorm:
        """A CpuSyncBatchNorm holding `norm`'s parameters and buffers."""
        synced = cls(norm.num_features, norm.eps, norm.momentum, norm.affine)
        synced.track_running_stats = norm.track_running_stats
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(synced, name, getattr(norm, name))
        synced.train(norm.training)
        return synced

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects a batch N x C x ..., got {input.dim()}-D input")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        shape = [1, -1] + [1] * (input.dim() - 2)  # a per-channel value against the input
        mean, var, count = global_moments(input)
        output = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean, var, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:  # a cumulative average (precise BatchNorm statistics)
            factor = 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (count / max(count - 1, 1)), factor)  # unbiased, as torch


def global_moments(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per channel mean and (biased) variance of `input` over every rank's batch, and the
    number of values per channel; each rank's input may hold another number of images."""
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    local_mean = input.mean(dims)
    squares = (input - local_mean.view(shape)).square().sum(dims)
    count = input.new_full((1,), float(input.numel() // input.shape[1]))
    row = torch.cat([count, local_mean, squares])
    rank, ranks = dist.get_rank(), dist.get_world_size()
    rows = [row if r == rank else torch.zeros_like(row) for r in range(ranks)]
    table = SumOverRanks.apply(torch.stack(rows))  # row r: rank r's count, mean, squares
    channels = input.shape[1]
    counts, means = table[:, :1], table[:, 1 : channels + 1]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    squares = table[:, channels + 1 :].sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, squares / total, float(total.detach())
