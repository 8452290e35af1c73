"""Explain topics about training a network well: BatchNorm (train and eval statistics, speed and
learning-rate tolerance) and the batch size with the learning rate (gradient noise, the
learning-rate range test). Signal propagation through depth (vanishing gradients,
initialisation) lives in `cnnlab.explain.depth`."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.data.augment import BatchPipeline
from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, format_number, topic
from cnnlab.explain.training import (
    balanced_subset,
    load_fashion_mnist,
    train_classifier,
    with_epochs,
)
from cnnlab.runs.config import TrainConfig
from cnnlab.scratch.batchnorm import batchnorm_forward
from cnnlab.studies.lr_find import lr_find

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over Fashion-MNIST's 10 classes


def _rounded(values, digits: int = 4) -> list[float]:
    return [float(f"{float(v):.{digits}g}") for v in values]


# ---- 10. BatchNorm ---------------------------------------------------------------------------


def _batchnorm_statistics(ctx: Context, batches: int) -> dict:
    """Feed a torch BatchNorm2d and cnnlab's NumPy batchnorm the same stream of batches whose
    channels have very different means and scales; then normalise a batch from the training
    distribution and one from a shifted, stretched distribution, in train and in eval mode."""
    rng = ctx.rng(10)
    means, stds = np.array([-3.0, 0.0, 5.0, 10.0]), np.array([0.5, 1.0, 3.0, 8.0])

    def batch(shift: float = 0.0, stretch: float = 1.0) -> np.ndarray:
        z = rng.standard_normal((64, 4, 6, 6))
        return means[:, None, None] + stds[:, None, None] * (shift + stretch * z)

    layer = nn.BatchNorm2d(4, dtype=torch.float64)  # momentum 0.1, as the NumPy default
    running_mean, running_var = np.zeros(4), np.ones(4)
    gamma, beta = np.ones(4), np.zeros(4)
    gaps = []  # torch against NumPy: outputs, then the running statistics
    for _ in range(batches):
        x = batch()
        out = layer.train()(torch.from_numpy(x)).detach().numpy()
        ref, _ = batchnorm_forward(x, gamma, beta, running_mean, running_var, train=True)
        gaps.append(out - ref)
    gaps += [layer.running_mean.numpy() - running_mean, layer.running_var.numpy() - running_var]

    def normalised(x: np.ndarray, train: bool) -> dict:
        # Train mode through F.batch_norm without running buffers, so `layer` keeps its own.
        with torch.no_grad():
            out = torch.from_numpy(x)
            out = F.batch_norm(out, None, None, training=True) if train else layer.eval()(out)
        axes = (0, 2, 3)
        return {"mean": _rounded(out.mean(axes), 3), "std": _rounded(out.std(axes), 3)}

    usual, shifted = batch(), batch(shift=2.0, stretch=3.0)
    found_mean, found_var = layer.running_mean.numpy(), layer.running_var.numpy()
    return {
        "channel_means": means.tolist(),
        "channel_stds": stds.tolist(),
        "batches_seen": batches,
        "running_mean": _rounded(found_mean),
        "running_var": _rounded(found_var),
        "running_mean_error_in_stds": float(np.max(np.abs(found_mean - means) / stds)),
        "running_var_relative_error": float(np.max(np.abs(found_var / stds**2 - 1))),
        "scratch_vs_torch_max_difference": float(max(np.abs(g).max() for g in gaps)),
        "train_mode": normalised(usual, train=True),
        "eval_mode": normalised(usual, train=False),
        "shifted_train_mode": normalised(shifted, train=True),
        "shifted_eval_mode": normalised(shifted, train=False),
    }


def _sigmoid_mlp(depth: int, width: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = 28 * 28
    for _ in range(depth):
        layers.append(nn.Linear(fan_in, width))
        layers += [nn.BatchNorm1d(width), nn.Sigmoid()] if batch_norm else [nn.Sigmoid()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _off_centre(stats: dict) -> float:
    """How far the per-channel outputs are from mean 0 and std 1 (the worst channel)."""
    return max(max(abs(m) for m in stats["mean"]), max(abs(s - 1) for s in stats["std"]))


@topic(
    10,
    "batchnorm",
    "BatchNorm: train and eval statistics, faster training",
    "BatchNorm normalises with the batch's statistics in training and with running averages in "
    "evaluation; it lets a deep sigmoid network train fast, even at a 10x learning rate.",
    """Batch normalisation (Ioffe & Szegedy, 2015) standardises each channel with the mean and
    variance of the current batch, and keeps exponential running averages of them for
    evaluation, where a batch is not a population. The experiment streams batches whose four
    channels have means -3..10 and stds 0.5..8 through torch's BatchNorm2d and cnnlab's NumPy
    batchnorm side by side, checks that the running statistics converge to the data's, and then
    normalises a batch from a shifted, stretched distribution: train mode still gives mean 0 and
    std 1, eval mode (fixed statistics) does not. Then an 8-layer sigmoid MLP (PyTorch's default
    initialisation), with and without BatchNorm after every linear layer, trains on real
    Fashion-MNIST with plain SGD at a learning rate of 0.1 and at 1.0.""",
)
def batchnorm(ctx: Context) -> Finding:
    stats = _batchnorm_statistics(ctx, batches=100 if ctx.quick else 400)
    data = load_fashion_mnist(ctx)
    images, epochs = (1024, 5) if ctx.quick else (4096, 10)
    lrs = {"normal": 0.1, "large": 1.0}
    runs: dict[str, list[float]] = {}
    for speed, lr in lrs.items():
        for batch_norm in (False, True):
            name = f"{'bn' if batch_norm else 'plain'}_lr_{speed}"
            ctx.log(f"training the {name} network")
            ctx.manual_seed(10)
            result = train_classifier(
                ctx,
                _sigmoid_mlp(8, 128, batch_norm),
                data,
                train_images=images,
                test_images=500,
                epochs=epochs,
                lr=lr,
                batch_size=32,
                seed_offset=10,
            )
            runs[name] = with_epochs(result, "train_loss")
    final = {name: losses[-1] for name, losses in runs.items()}
    figures = save_curves(
        ctx.figure_path("loss"),
        {name: (list(range(1, epochs + 1)), losses) for name, losses in runs.items()},
        f"8-layer sigmoid MLP on Fashion-MNIST ({images} images)",
        "epoch",
        "training loss (epoch mean)",
    )
    train_ok = _off_centre(stats["train_mode"]) < 0.05 and _off_centre(stats["eval_mode"]) < 0.1
    shifted_kept = _off_centre(stats["shifted_train_mode"]) < 0.05
    shifted_not = _off_centre(stats["shifted_eval_mode"]) > 1.0
    converged = (
        stats["running_mean_error_in_stds"] < 0.05 and stats["running_var_relative_error"] < 0.1
    )
    faster = all(final[f"bn_lr_{s}"] < 0.75 * final[f"plain_lr_{s}"] for s in lrs)
    large_ok = math.isfinite(final["bn_lr_large"]) and final["bn_lr_large"] < 0.8 * CHANCE_LOSS
    shifted = stats["shifted_eval_mode"]
    verdict = (
        f"After {stats['batches_seen']} batches the running statistics are within "
        f"{stats['running_mean_error_in_stds']:.3f} std (mean) and "
        f"{stats['running_var_relative_error']:.1%} (variance) of the data's; NumPy and torch "
        f"agree to {stats['scratch_vs_torch_max_difference']:.1e}. On a batch shifted by 2 and "
        f"stretched by 3 stds, train mode is off mean 0 / std 1 by at most "
        f"{_off_centre(stats['shifted_train_mode']):.3f}, eval mode gives means {shifted['mean']} "
        f"and stds {shifted['std']}. The sigmoid "
        f"MLP ends at training loss {final['plain_lr_normal']:.3f} (lr 0.1) and "
        f"{final['plain_lr_large']:.3f} (lr 1.0) without BatchNorm (chance: {CHANCE_LOSS:.3f}), "
        f"{final['bn_lr_normal']:.3f} and {final['bn_lr_large']:.3f} with it (whose first "
        f"epoch at lr 1.0 averaged {runs['bn_lr_large'][0]:.3f})."
    )
    return Finding(
        numbers={
            "statistics": stats,
            "training": {
                "train_images": images,
                "epochs": epochs,
                "batch_size": 32,
                "learning_rates": lrs,
                "final_loss": final,
                "loss_per_epoch": {name: _rounded(losses) for name, losses in runs.items()},
            },
        },
        holds=train_ok and shifted_kept and shifted_not and converged and faster and large_ok,
        verdict=verdict,
        figures=figures,
    )


# ---- 16. Batch size and learning rate --------------------------------------------------------


def _flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _gradient_noise(ctx: Context, data, images: int, draws: int, sizes: list[int]) -> dict:
    """E ||g_B - g||^2: how far a minibatch gradient lies from the full-batch one, per batch
    size, for a small MLP at initialisation on a Fashion-MNIST subset (batches drawn without
    replacement, as an epoch's batches are)."""
    subset = balanced_subset(data.train, images, ctx.seed + 16, "fashion-mnist/train")
    mean, std = subset.mean_std()
    x, y = BatchPipeline(mean, std)(subset.images), subset.labels
    generator = ctx.manual_seed(16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))
    full = _flat_gradient(model, x, y)
    variance = {}
    for size in sizes:
        total = 0.0
        for _ in range(draws):
            batch = torch.randperm(images, generator=generator)[:size]
            total += (_flat_gradient(model, x[batch], y[batch]) - full).square().sum().item()
        variance[size] = total / draws
    return variance


@topic(
    16,
    "batch-size",
    "Batch size and the learning rate",
    "A minibatch gradient's noise falls as 1/B with the batch size B; the learning-rate range "
    "test finds where the loss falls fastest and where it diverges.",
    """A minibatch gradient is the mean of B per-example gradients, so its variance around the
    full-batch gradient falls as 1/B: bigger batches give a cleaner direction, which is why the
    learning rate is usually scaled with the batch size (Goyal et al., 2017, "Accurate, Large
    Minibatch SGD"). The experiment measures E||g_B - g||^2 for batch sizes 8 to 512 on a small
    MLP and a real Fashion-MNIST subset and fits the slope on a log-log scale. Then it runs
    cnnlab's learning-rate range test (Smith, 2017, "Cyclical Learning Rates") on lenet_bn: the
    rate grows exponentially batch by batch while the smoothed loss is recorded; it falls, then
    turns and climbs once the rate is too large.""",
)
def batch_size(ctx: Context) -> Finding:
    data = load_fashion_mnist(ctx)
    sizes = [8, 16, 32, 64, 128, 256, 512]
    images, draws = (4096, 30) if ctx.quick else (16384, 100)
    variance = _gradient_noise(ctx, data, images, draws, sizes)
    slope = float(np.polyfit(np.log(sizes), np.log(list(variance.values())), 1)[0])
    ctx.log("running the learning-rate range test on lenet_bn")
    config = TrainConfig(
        model="lenet_bn",
        data_dir=ctx.data_dir,
        batch_size=128,
        seed=ctx.seed,
        precise_bn=0,
        device="cpu",
        precision="fp32",
        memory_format="contiguous",
        quiet=True,
    )
    steps = 60 if ctx.quick else 200
    found = lr_find(config, start_lr=1e-4, end_lr=100.0, steps=steps)
    lowest = int(np.argmin(found.losses))
    shown = np.unique(np.linspace(0, len(found.lrs) - 1, 40).round().astype(int))
    reference = variance[sizes[0]] * sizes[0]
    figures = save_curves(
        ctx.figure_path("noise"),
        {
            "measured E||g_B - g||^2": (sizes, list(variance.values())),
            "1/B reference": (sizes, [reference / size for size in sizes]),
        },
        f"Minibatch gradient noise vs batch size (slope {slope:.2f})",
        "batch size B",
        "E||g_B - g||^2",
        log_x=True,
        log_y=True,
    )
    figures += save_curves(
        ctx.figure_path("lr-range"),
        {"smoothed training loss": (found.lrs, found.losses)},
        f"Learning-rate range test, lenet_bn (suggested lr {format_number(found.suggested)})",
        "learning rate",
        "smoothed loss",
        log_x=True,
    )
    falls = found.losses[lowest] < 0.9 * found.losses[0]
    climbs = found.stopped_early or found.losses[-1] > 1.5 * found.losses[lowest]
    suggested_ok = found.suggested is not None and found.suggested < found.lrs[lowest]
    verdict = (
        f"The minibatch gradient's variance falls from {variance[8]:.3g} at B=8 to "
        f"{variance[512]:.3g} at B=512, a log-log slope of {slope:.2f} (1/B is -1). The range "
        f"test's smoothed loss goes from {found.losses[0]:.3f} to a lowest "
        f"{found.losses[lowest]:.3f} at lr {found.lrs[lowest]:.3g}, then to "
        f"{found.losses[-1]:.3f} at lr {found.lrs[-1]:.3g}"
        + (" (stopped: diverging)" if found.stopped_early else "")
        + f"; the suggested lr (steepest fall) is {format_number(found.suggested)}."
    )
    return Finding(
        numbers={
            "subset_images": images,
            "draws_per_batch_size": draws,
            "gradient_variance": {str(size): value for size, value in variance.items()},
            "log_log_slope": slope,
            "lr_range_test": {
                "model": "lenet_bn",
                "batch_size": 128,
                "batches": len(found.lrs),
                "stopped_early": found.stopped_early,
                "suggested_lr": found.suggested,
                "lowest_loss": found.losses[lowest],
                "lr_at_lowest_loss": found.lrs[lowest],
                "first_loss": found.losses[0],
                "last_loss": found.losses[-1],
                "lrs": _rounded([found.lrs[i] for i in shown], 3),
                "losses": _rounded([found.losses[i] for i in shown]),
            },
        },
        holds=abs(slope + 1) < 0.15 and falls and climbs and suggested_ok,
        verdict=verdict,
        figures=figures,
    )
