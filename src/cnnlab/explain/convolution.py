"""Explain topics about convolution layers: convolution as cross-correlation (topic 2), 1x1
convolution as a per-pixel fully connected layer (topic 5), and fully connected layers as
convolutions that score a larger image as a map (topic 6)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnlab.analysis import summarize, to_fully_convolutional
from cnnlab.explain.figures import save_bars, save_curves
from cnnlab.explain.layers import _fit
from cnnlab.explain.topic import Context, Finding, topic
from cnnlab.models import create_model
from cnnlab.scratch.conv import conv_forward, im2col


def _true_convolution(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Valid-mode true convolution from its definition, y[i, j] = sum_{a, b} x[i - a, j - b]
    k[a, b], summed over input channels: x (N, C, H, W), kernels (O, C, kh, kw). Output row u
    is row i = u + kh - 1 of the full convolution, the first one whose every term lies inside x,
    so offset a reads input row u + kh - 1 - a: the index runs backwards as a runs forwards."""
    n, _, height, width = x.shape
    outputs, _, kh, kw = kernels.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    y = np.zeros((n, outputs, out_h, out_w), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            row, col = kh - 1 - a, kw - 1 - b
            window = x[:, :, row : row + out_h, col : col + out_w]
            y += np.einsum("nchw,oc->nohw", window, kernels[:, :, a, b])
    return y


class _TrueConvolution(nn.Module):
    """A layer parameterised as a true convolution: conv2d (a cross-correlation) with the
    parameter flipped in both spatial axes."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight.flip(-2, -1))


def _relative(value, reference) -> float:
    """max |value - reference| / max |reference|, for NumPy arrays or tensors."""
    value, reference = np.asarray(value), np.asarray(reference)
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def _least_squares_mse(x: torch.Tensor, y: torch.Tensor, kernel: int) -> float:
    """The lowest MSE any single kernel reaches: linear least squares on the im2col columns."""
    columns = im2col(x.numpy(), kernel)  # (N, kh * kw, positions)
    design = torch.from_numpy(columns.transpose(0, 2, 1).reshape(-1, kernel * kernel))
    solution = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution
    return nn.functional.mse_loss(design @ solution, y.reshape(-1, 1)).item()


@topic(
    2,
    "convolution",
    "Convolution is cross-correlation",
    "A conv layer computes cross-correlation, which is true convolution with the kernel flipped; "
    "since the kernel is learned, the flip makes no difference to what a layer can learn.",
    """Mathematical convolution sums x[i - a, j - b] k[a, b]: the kernel is flipped before it
    slides. Conv layers (torch's conv2d, cnnlab's NumPy conv_forward) slide it unflipped, which
    is cross-correlation (Goodfellow, Bengio and Courville 2016, section 9.1). The experiment
    computes true convolution from its definition in NumPy and compares it with both layers, with
    and without flipping the kernel. Then it trains two layers to reproduce a random 5x5 filter's
    outputs (plus noise): one parameterised as cross-correlation, one as true convolution. Both
    reach the least-squares optimum, and the learned kernels are flips of each other.""",
)
def convolution(ctx: Context) -> Finding:
    rng = ctx.rng()
    x = rng.standard_normal((4, 3, 16, 16))
    kernels = rng.standard_normal((2, 3, 5, 5))
    flipped = kernels[:, :, ::-1, ::-1].copy()
    true = _true_convolution(x, kernels)
    x_t = torch.from_numpy(x)
    torch_unflipped = nn.functional.conv2d(x_t, torch.from_numpy(kernels)).numpy()
    symmetric = (kernels + flipped) / 2
    checks = {
        "torch_flipped_vs_true": _relative(
            nn.functional.conv2d(x_t, torch.from_numpy(flipped)), true
        ),
        "scratch_flipped_vs_true": _relative(conv_forward(x, flipped)[0], true),
        "scratch_vs_torch_unflipped": _relative(conv_forward(x, kernels)[0], torch_unflipped),
        "torch_unflipped_vs_true": _relative(torch_unflipped, true),
        "symmetric_kernel_unflipped_vs_true": _relative(
            conv_forward(x, symmetric)[0], _true_convolution(x, symmetric)
        ),
    }

    generator = ctx.manual_seed(1)
    images = torch.randn(16, 1, 12, 12, dtype=torch.float64, generator=generator)
    target = 0.5 * torch.randn(1, 1, 5, 5, dtype=torch.float64, generator=generator)
    noise = 0.1 * torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=generator)
    outputs = nn.functional.conv2d(images, target) + noise
    correlation = nn.Conv2d(1, 1, 5, bias=False, dtype=torch.float64)
    # The same starting values (not flipped ones), so the two runs take different paths.
    convolution_layer = _TrueConvolution(correlation.weight.detach().clone())
    steps = 500 if ctx.quick else 2000
    curves: dict[str, list[float]] = {"cross-correlation layer": [], "true-convolution layer": []}
    correlation_loss = _fit(correlation, images, outputs, steps, curves["cross-correlation layer"])
    convolution_loss = _fit(
        convolution_layer, images, outputs, steps, curves["true-convolution layer"]
    )
    optimum = _least_squares_mse(images, outputs, 5)
    learned = correlation.weight.detach()
    kernel_flip_diff = _relative(convolution_layer.weight.detach(), learned.flip(-2, -1))
    target_diff = _relative(learned, target)
    ratio = correlation_loss / convolution_loss

    every = max(1, steps // 40)
    figures = save_curves(
        ctx.figure_path("training"),
        {name: (list(range(0, steps, every)), curve[::every]) for name, curve in curves.items()},
        "Learning a 5x5 filter as cross-correlation or as true convolution",
        "Adam step",
        "training MSE",
        log_y=True,
    )
    exact = ("torch_flipped_vs_true", "scratch_flipped_vs_true", "scratch_vs_torch_unflipped")
    flip_exact = max(checks[name] for name in exact) < 1e-12
    flip_exact = flip_exact and checks["symmetric_kernel_unflipped_vs_true"] < 1e-12
    unflipped_differs = checks["torch_unflipped_vs_true"] > 0.1
    same_loss = abs(ratio - 1) < 1e-3 and abs(correlation_loss / optimum - 1) < 1e-3
    holds = flip_exact and unflipped_differs and same_loss and kernel_flip_diff < 1e-2
    verdict = (
        f"conv2d and conv_forward with the kernel flipped match true convolution to "
        f"{checks['torch_flipped_vs_true']:.1e} and {checks['scratch_flipped_vs_true']:.1e} "
        f"(relative); unflipped they differ by {checks['torch_unflipped_vs_true']:.2f}, except "
        f"for a symmetric kernel ({checks['symmetric_kernel_unflipped_vs_true']:.1e}). Trained "
        f"for {steps} steps, the cross-correlation layer reaches MSE {correlation_loss:.6f} and "
        f"the true-convolution layer {convolution_loss:.6f} (ratio {ratio:.6f}; least-squares "
        f"optimum {optimum:.6f}), and their kernels are flips of each other to "
        f"{kernel_flip_diff:.1e} (relative)."
    )
    return Finding(
        numbers={
            "relative_max_difference": checks,
            "cross_correlation_layer_mse": correlation_loss,
            "true_convolution_layer_mse": convolution_loss,
            "loss_ratio": ratio,
            "least_squares_optimum_mse": optimum,
            "learned_kernels_flip_relative_difference": kernel_flip_diff,
            "learned_vs_target_relative_difference": target_diff,
            "training_steps": steps,
        },
        holds=holds,
        verdict=verdict,
        figures=figures,
    )


def _costs(layers: list[nn.Module], input_size: tuple[int, int, int]) -> dict:
    summary = summarize(nn.Sequential(*layers), input_size)
    return {
        "params": summary.total_params,
        "macs": summary.total_macs,
        "output_shape": summary.output_shape,
    }


def _bottleneck_costs() -> dict[str, dict]:
    """A direct convolution against the 1x1-reduced design with the same input and output:
    ResNet-50's bottleneck at 56x56 and GoogLeNet's inception (3a) 5x5 branch at 28x28."""
    relu = nn.ReLU
    designs = {
        "resnet_3x3": (
            (256, 56, 56),
            [nn.Conv2d(256, 256, 3, padding=1)],
            [
                nn.Conv2d(256, 64, 1),
                relu(),
                nn.Conv2d(64, 64, 3, padding=1),
                relu(),
                nn.Conv2d(64, 256, 1),
            ],
        ),
        "googlenet_5x5": (
            (192, 28, 28),
            [nn.Conv2d(192, 32, 5, padding=2)],
            [nn.Conv2d(192, 16, 1), relu(), nn.Conv2d(16, 32, 5, padding=2)],
        ),
    }
    costs = {}
    for name, (input_size, direct, reduced) in designs.items():
        direct, reduced = _costs(direct, input_size), _costs(reduced, input_size)
        costs[name] = {
            "direct": direct,
            "bottleneck": reduced,
            "macs_ratio": direct["macs"] / reduced["macs"],
            "params_ratio": direct["params"] / reduced["params"],
        }
    return costs


@topic(
    5,
    "one-by-one",
    "1x1 convolution",
    "A 1x1 convolution is a fully connected layer applied to every pixel's channel vector; it "
    "changes the channel count cheaply, which makes bottlenecks cheaper than direct 3x3 or 5x5.",
    """A 1x1 kernel sees one pixel, so each output pixel is W x + b of that pixel's C_in channel
    values, the same W at every position: a per-pixel fully connected layer (Lin, Chen and Yan,
    "Network in Network", 2014). The experiment applies conv2d with a (64, 256, 1, 1) kernel and
    nn.Linear(256, 64) with the same weights to every pixel and compares. cnnlab's summarize
    then counts parameters and MACs of the 1x1 layer and of the bottlenecks that use it to
    shrink the channels before an expensive convolution: GoogLeNet's 1x1 reductions before its
    5x5 convolutions (Szegedy et al. 2015) and ResNet's 1x1-3x3-1x1 bottleneck (He et al. 2016),
    each against the direct convolution.""",
)
def one_by_one(ctx: Context) -> Finding:
    ctx.manual_seed()
    c_in, c_out, size = 256, 64, 56
    conv = nn.Conv2d(c_in, c_out, 1, dtype=torch.float64)
    linear = nn.Linear(c_in, c_out, dtype=torch.float64)
    linear.load_state_dict({"weight": conv.weight.detach().reshape(c_out, c_in), "bias": conv.bias})
    x = torch.randn(2 if ctx.quick else 8, c_in, size, size, dtype=torch.float64)
    with torch.no_grad():  # the linear layer runs on channels-last pixels, then back
        difference = _relative(linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), conv(x))
    one = _costs([nn.Conv2d(c_in, c_out, 1)], (c_in, size, size))
    costs = _bottleneck_costs()
    figures = save_bars(
        ctx.figure_path("macs"),
        {
            f"{name} {kind}": cost[kind]["macs"] / 1e6
            for name, cost in costs.items()
            for kind in ("direct", "bottleneck")
        },
        "Direct convolution vs 1x1 bottleneck (same input and output shape)",
        "MACs per image (millions)",
        log_y=True,
    )
    counts_match = one["params"] == c_in * c_out + c_out and one["macs"] == size**2 * c_in * c_out
    cheaper = all(
        cost["direct"]["output_shape"] == cost["bottleneck"]["output_shape"]
        and min(cost["macs_ratio"], cost["params_ratio"]) > 1
        for cost in costs.values()
    )
    resnet, googlenet = costs["resnet_3x3"], costs["googlenet_5x5"]
    verdict = (
        f"conv2d with a 1x1 kernel and nn.Linear({c_in}, {c_out}) on every pixel agree to "
        f"{difference:.1e} (relative). The 1x1 layer maps {c_in} to {one['output_shape'][0]} "
        f"channels with {one['params']:,} parameters (C_in*C_out + C_out = "
        f"{c_in * c_out + c_out:,}) and {one['macs']:,} MACs at {size}x{size}. The ResNet "
        f"bottleneck costs {resnet['bottleneck']['macs'] / 1e6:.0f}M MACs against "
        f"{resnet['direct']['macs'] / 1e6:.0f}M for a direct 3x3 ({resnet['macs_ratio']:.1f}x "
        f"fewer), GoogLeNet's 1x1 reduction before the 5x5 "
        f"{googlenet['bottleneck']['macs'] / 1e6:.1f}M against "
        f"{googlenet['direct']['macs'] / 1e6:.1f}M ({googlenet['macs_ratio']:.1f}x fewer)."
    )
    return Finding(
        numbers={
            "conv_vs_per_pixel_linear_relative_difference": difference,
            "one_by_one": one,
            **costs,
        },
        holds=difference < 1e-12
        and one["output_shape"] == [c_out, size, size]
        and counts_match
        and cheaper,
        verdict=verdict,
        figures=figures,
    )


def _fc_as_conv(ctx: Context) -> dict:
    """VGG's first FC layer, nn.Linear(25088, 4096) on a flattened 512x7x7 map, against a 7x7
    convolution with 4096 filters holding the same weights (a view: no second 400 MB copy)."""
    ctx.manual_seed(2)
    linear = nn.Linear(512 * 7 * 7, 4096)
    with torch.device("meta"):
        conv = nn.Conv2d(512, 4096, 7)
    weights = {"weight": linear.weight.detach().view(4096, 512, 7, 7), "bias": linear.bias}
    conv.load_state_dict(weights, assign=True)
    x = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        by_linear = linear(x.flatten(1))
        by_conv = conv(x)
    return {
        "conv_output_shape": list(by_conv.shape[1:]),
        "relative_max_difference": _relative(by_conv.flatten(1), by_linear),
        "linear_params": sum(p.numel() for p in linear.parameters()),
        "conv_params": sum(p.numel() for p in conv.parameters()),
    }


def _dense_vs_crops(ctx: Context, padding: int, crop: int, cells: int) -> dict:
    """LeNet made fully convolutional, on an image `cells - 1` jumps larger than the crop,
    against the original LeNet on every crop at that jump (float64, eval mode)."""
    ctx.manual_seed(3)
    model = create_model("lenet", num_classes=10, in_channels=1).eval()
    model.features[0].padding = (padding, padding)
    dense = to_fully_convolutional(model)
    # The jump of the dense model's output: input pixels between adjacent cells of the map.
    step = int(summarize(dense, (1, crop, crop)).jump[0])
    model, dense = model.double(), dense.double()
    size = crop + (cells - 1) * step
    image = torch.randn(2, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        scores = dense(image)
        crops = [image[..., i : i + crop, j : j + crop] for i, j in _offsets(cells, step)]
        per_crop = model(torch.cat(crops))
    cell_scores = scores.permute(2, 3, 0, 1).reshape(-1, 10)  # cell-major, as the crops are
    return {
        "input_size": size,
        "map_size": list(scores.shape[-2:]),
        "jump": step,
        "max_difference": (cell_scores - per_crop).abs().max().item(),
        "relative_max_difference": _relative(cell_scores, per_crop),
    }


def _offsets(cells: int, step: int) -> list[tuple[int, int]]:
    return [(i * step, j * step) for i in range(cells) for j in range(cells)]


@topic(
    6,
    "fc-to-conv",
    "Fully connected layers as convolutions",
    "A fully connected layer on a CxHxW map is an HxW convolution; converted this way, a "
    "classifier scores a larger image as a map, one cell per crop.",
    """VGG's first fully connected layer reads a flattened 512x7x7 map; a 7x7 convolution with
    4096 filters reads the same 25,088 numbers with the same weights, reshaped, and has the same
    parameter count. Turning every FC layer into a convolution this way makes a fully
    convolutional network that runs on larger images and returns a map of class scores (VGG,
    Simonyan and Zisserman 2015, section 3.2; OverFeat, Sermanet et al. 2014). The experiment
    checks the single layer, then converts LeNet with cnnlab's to_fully_convolutional and compares
    each cell of its map with LeNet's logits on the corresponding crop, the crops one jump of the
    network apart. LeNet-5 is used as in 1998: 32x32 inputs with no padding, since zero padding
    inside the network pads each crop with zeros where the large image has neighbouring pixels;
    d2l's padded form is measured too, for contrast.""",
)
def fc_to_conv(ctx: Context) -> Finding:
    layer = _fc_as_conv(ctx)
    cells = 5 if ctx.quick else 9
    exact = _dense_vs_crops(ctx, padding=0, crop=32, cells=cells)
    padded = _dense_vs_crops(ctx, padding=2, crop=28, cells=cells)
    exact_relative = exact["relative_max_difference"]
    padded_relative = padded["relative_max_difference"]
    figures = save_bars(
        ctx.figure_path("differences"),
        {
            "FC vs 7x7 conv (float32)": layer["relative_max_difference"],
            "map vs crops (no padding)": exact_relative,
            "map vs crops (d2l padding)": padded_relative,
        },
        "Largest difference, relative to the largest output",
        "relative max |difference|",
        log_y=True,
    )
    # 25,088-term float32 sums taken in different orders: a few hundred epsilons at most.
    tolerance = 1000 * torch.finfo(torch.float32).eps
    layer_equal = (
        layer["relative_max_difference"] < tolerance
        and layer["linear_params"] == layer["conv_params"]
        and layer["conv_output_shape"] == [4096, 1, 1]
    )
    map_equal = exact["map_size"] == [cells, cells] and exact_relative < 1e-12
    verdict = (
        f"nn.Linear(25088, 4096) and a 7x7 conv with 4096 filters agree to "
        f"{layer['relative_max_difference']:.1e} (relative, float32) with "
        f"{layer['conv_params']:,} parameters each. Fully convolutional LeNet on a "
        f"{exact['input_size']}x{exact['input_size']} image gives a "
        f"{exact['map_size'][0]}x{exact['map_size'][1]} score map whose cells equal LeNet's "
        f"logits on the 32x32 crops {exact['jump']} pixels apart to {exact_relative:.1e}; "
        f"with padding inside the network (d2l's form) they differ by {padded_relative:.1e}, "
        f"the neighbouring pixels standing where each crop had zeros."
    )
    return Finding(
        numbers={
            "fc_layer_as_conv": layer,
            "dense_map_vs_crops": exact,
            "dense_map_vs_crops_with_padding": padded,
        },
        holds=layer_equal and map_equal,
        verdict=verdict,
        figures=figures,
    )
