"""Explain topics about what single layers do: why networks need activations (topic 1) and why
inverted dropout keeps the expected activation (topic 9). The convolution topics live in
`cnnlab.explain.convolution`, which borrows this module's `_fit`."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.scratch.layers import dropout_forward


def _mlp(widths: list[int], activation: type[nn.Module] | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out, dtype=torch.float64))
        if activation is not None and i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _fit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, curve: list | None = None
) -> float:
    """Full-batch Adam on the mean squared error; the final training MSE. With `curve`, the loss
    of every step is appended to it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if curve is not None:
            curve.append(loss.item())
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def _collapse(stack: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """The single affine map (W, b) equal to a stack of Linear layers: W = W_k ... W_1 and
    b = W_k ... W_2 b_1 + ... + b_k."""
    weight = torch.eye(stack[0].in_features, dtype=torch.float64)
    bias = torch.zeros(stack[0].in_features, dtype=torch.float64)
    for layer in stack:
        weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
    return weight.detach(), bias.detach()


@topic(
    1,
    "activations",
    "Why activations",
    "Without activations a deep network is one affine map; with ReLU it fits what no affine "
    "map can.",
    """A linear layer computes W x + b, and a composition of affine maps is affine: six layers
    without activations collapse into one matrix and one bias. The experiment multiplies the
    layers out and compares, fits an affine map to the stack's outputs by least squares, and
    then trains three models on y = sin(2 pi x): the best affine fit, a deep linear network and
    a ReLU network of the same shape.""",
)
def activations(ctx: Context) -> Finding:
    ctx.manual_seed()
    stack = _mlp([8, 32, 32, 32, 32, 32, 4], activation=None)
    x = torch.randn(512, 8, dtype=torch.float64)
    with torch.no_grad():
        out = stack(x)
    weight, bias = _collapse(stack)
    collapse_error = (out - (x @ weight.T + bias)).abs().max().item() / out.abs().max().item()
    # Least squares for an affine map from inputs to the stack's outputs: exact if affine.
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, out).solution
    fit_error = (design @ solution - out).abs().max().item() / out.abs().max().item()

    xs = torch.linspace(-1, 1, 256, dtype=torch.float64)[:, None]
    ys = torch.sin(2 * torch.pi * xs)
    line = torch.linalg.lstsq(torch.cat([xs, torch.ones_like(xs)], 1), ys).solution
    best_affine_mse = nn.functional.mse_loss(torch.cat([xs, torch.ones_like(xs)], 1) @ line, ys)
    steps = 600 if ctx.quick else 3000
    deep_linear = _mlp([1, 64, 64, 64, 1], activation=None)
    relu = _mlp([1, 64, 64, 64, 1], activation=nn.ReLU)
    deep_linear_mse = _fit(deep_linear, xs, ys, steps)
    relu_mse = _fit(relu, xs, ys, steps)

    figures = save_curves(
        ctx.figure_path("fits"),
        {
            "target sin(2 pi x)": (xs.flatten().tolist(), ys.flatten().tolist()),
            "deep linear net": (xs.flatten().tolist(), deep_linear(xs).flatten().tolist()),
            "ReLU net": (xs.flatten().tolist(), relu(xs).flatten().tolist()),
        },
        "The same depth with and without ReLU",
        "x",
        "y",
    )
    collapses = collapse_error < 1e-12 and fit_error < 1e-12
    no_gain = deep_linear_mse >= 0.99 * best_affine_mse.item()
    relu_wins = relu_mse < 0.1 * best_affine_mse.item()
    verdict = (
        f"The 6-layer linear stack equals its collapsed affine map to {collapse_error:.1e} "
        f"(relative) and an affine least-squares fit reproduces it to {fit_error:.1e}. On "
        f"sin(2 pi x) the deep linear net reaches MSE {deep_linear_mse:.4f}, no better than the "
        f"best line ({best_affine_mse.item():.4f}); the ReLU net of the same shape reaches "
        f"{relu_mse:.4f}, {best_affine_mse.item() / max(relu_mse, 1e-12):.0f}x lower."
    )
    return Finding(
        numbers={
            "collapse_relative_error": collapse_error,
            "affine_fit_relative_error": fit_error,
            "best_affine_mse": best_affine_mse.item(),
            "deep_linear_mse": deep_linear_mse,
            "relu_mse": relu_mse,
            "training_steps": steps,
        },
        holds=collapses and no_gain and relu_wins,
        verdict=verdict,
        figures=figures,
    )


def _dropout_means(ctx: Context, x: np.ndarray, p: float, draws: int) -> dict:
    """Average `draws` train-mode passes of cnnlab's NumPy dropout and of torch's nn.Dropout on
    the positive input x; ratios of summed output to summed input, with their standard errors."""
    rng = ctx.rng(round(p * 1000))
    total = np.zeros_like(x)
    plain_total = np.zeros_like(x)  # the same keep masks without the 1 / (1 - p) scale
    zeroed = 0
    for _ in range(draws):
        out, mask = dropout_forward(x, p, train=True, rng=rng)
        total += out
        plain_total += x * (mask != 0)
        zeroed += int(np.count_nonzero(mask == 0))
    mean = total / draws
    ctx.manual_seed(round(p * 1000))
    batch = torch.from_numpy(x).expand(draws, -1)
    torch_mean = nn.Dropout(p).train()(batch).mean(0).numpy()
    # Each output is x / (1 - p) with probability 1 - p, else 0: variance x^2 p / (1 - p).
    spread = np.sqrt(p / (1 - p))
    element_se = x * spread / np.sqrt(draws)
    ratio_se = float(spread * np.sqrt(np.sum(x**2)) / (np.sum(x) * np.sqrt(draws)))
    ratio = float(mean.sum() / x.sum())
    torch_ratio = float(torch_mean.sum() / x.sum())
    fraction_zeroed = zeroed / (draws * x.size)
    return {
        "mean_ratio": ratio,
        "torch_mean_ratio": torch_ratio,
        "plain_mean_ratio": float(plain_total.sum() / draws / x.sum()),
        "ratio_standard_error": ratio_se,
        "z": (ratio - 1) / ratio_se,
        "torch_z": (torch_ratio - 1) / ratio_se,
        # Per element, (mean - x) / se has variance 1 exactly: its RMS checks the error model.
        "element_rms_z": float(np.sqrt(np.mean(((mean - x) / element_se) ** 2))),
        "fraction_zeroed": fraction_zeroed,
        "fraction_zeroed_z": (fraction_zeroed - p) / np.sqrt(p * (1 - p) / (draws * x.size)),
    }


@topic(
    9,
    "dropout",
    "Inverted dropout keeps the expected activation",
    "Inverted dropout zeroes each unit with probability p and scales the survivors by 1/(1-p), "
    "so the expected activation is unchanged in training and evaluation needs no rescaling.",
    """Dropout (Srivastava et al. 2014) zeroes units at random while training. Without
    rescaling, the expected activation falls to (1 - p) times its value, and the weights at test
    time would have to be scaled by 1 - p to match; inverted dropout scales the survivors by
    1 / (1 - p) instead, so the expectation is the input itself and evaluation uses the layer
    unchanged. The experiment averages many train-mode passes of cnnlab's NumPy dropout_forward
    and torch's nn.Dropout at several p, compares the mean with the input in units of its
    expected standard error, counts the fraction zeroed, and checks that train mode is random and
    eval mode returns the input exactly.""",
)
def dropout(ctx: Context) -> Finding:
    x = ctx.rng().uniform(0.5, 1.5, 1000)
    draws = 500 if ctx.quick else 5000
    ps = [0.1, 0.3, 0.5, 0.7, 0.9]
    rows = [_dropout_means(ctx, x, p, draws) for p in ps]
    first, _ = dropout_forward(x, 0.5, train=True, rng=ctx.rng(1))
    second, _ = dropout_forward(x, 0.5, train=True, rng=ctx.rng(2))
    layer = nn.Dropout(0.5)
    tensor = torch.from_numpy(x)
    ctx.manual_seed(3)
    random_train = not torch.equal(layer(tensor), layer(tensor)) and not np.array_equal(
        first, second
    )
    layer.eval()
    eval_identity = torch.equal(layer(tensor), tensor) and np.array_equal(
        dropout_forward(x, 0.5, train=False)[0], x
    )
    figures = save_curves(
        ctx.figure_path("mean"),
        {
            "inverted dropout (cnnlab)": (ps, [row["mean_ratio"] for row in rows]),
            "nn.Dropout (torch)": (ps, [row["torch_mean_ratio"] for row in rows]),
            "plain dropout (no rescaling)": (ps, [row["plain_mean_ratio"] for row in rows]),
        },
        f"Mean train-mode output / input over {draws} draws",
        "drop probability p",
        "mean activation ratio",
    )
    worst_z = max(max(abs(row["z"]), abs(row["torch_z"])) for row in rows)
    rms_z = [row["element_rms_z"] for row in rows]
    zeroed_error = max(abs(row["fraction_zeroed"] - p) for row, p in zip(rows, ps, strict=True))
    zeroed_z = max(abs(row["fraction_zeroed_z"]) for row in rows)
    plain = [row["plain_mean_ratio"] - (1 - p) for row, p in zip(rows, ps, strict=True)]
    plain_error = max(abs(value) for value in plain)
    ratios = ", ".join(f"{row['mean_ratio']:.4f}" for row in rows)
    holds = (
        worst_z < 4
        and all(0.85 < value < 1.15 for value in rms_z)
        and zeroed_z < 4
        and random_train
        and eval_identity
    )
    verdict = (
        f"Over {draws} train-mode draws at p = {', '.join(f'{p:g}' for p in ps)}, the mean "
        f"output of both implementations equals the input within {worst_z:.1f} standard errors "
        f"(cnnlab's ratios {ratios}; its per-element RMS "
        f"error {min(rms_z):.2f}-{max(rms_z):.2f} standard errors), while plain dropout keeps "
        f"only 1 - p (within {plain_error:.4f}). The fraction zeroed is within {zeroed_error:.4f} "
        f"of p ({zeroed_z:.1f} standard errors); two train-mode calls "
        f"{'differ' if random_train else 'agree'}, and eval mode "
        f"{'returns the input exactly' if eval_identity else 'changes the input'}."
    )
    return Finding(
        numbers={
            "draws": draws,
            "per_p": {f"p={p:g}": row for p, row in zip(ps, rows, strict=True)},
            "worst_abs_z": worst_z,
            "fraction_zeroed_max_error": zeroed_error,
            "fraction_zeroed_worst_abs_z": zeroed_z,
            "plain_ratio_max_error_vs_1_minus_p": plain_error,
            "train_mode_random": random_train,
            "eval_mode_identity": eval_identity,
        },
        holds=holds,
        verdict=verdict,
        figures=figures,
    )
