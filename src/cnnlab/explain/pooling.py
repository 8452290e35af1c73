"""Explain topic 7: what max pooling does to a shifted input (local translation invariance),
measured on aligned peaks seen by a blob detector and on white-noise images through a random
conv.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import max_pool2d

from cnnlab.explain.figures import save_curves
from cnnlab.explain.topic import Context, Finding, at_least, topic


def _changed(before: torch.Tensor, after: torch.Tensor) -> float:
    """Jaccard distance of two detection maps: changed detections over all detections."""
    either = (before | after).sum().item()
    return (before ^ after).sum().item() / either if either else 0.0


@torch.no_grad()
def _peak_shifts(pool: int, generator: torch.Generator) -> dict[str, list[float]]:
    """Bright pixels at the top-left corners of random pooling cells (two cells apart, so
    responses never merge), seen by a 3x3 blob detector (1 at a peak, 0.5 beside it) and
    shifted by 0..pool pixels down and right: the changed detections (response > 0.75) of the
    detector map and of its max-pooled map."""
    cells = 12
    chosen = torch.rand(cells // 2, cells // 2, generator=generator) < 0.5
    chosen[0, 0] = True
    rows, cols = torch.nonzero(chosen, as_tuple=True)
    image = torch.zeros(1, 1, cells * pool, cells * pool)
    image[0, 0, 2 * pool * rows, 2 * pool * cols] = 1.0
    detector = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False)
    detector.weight.fill_(0.5)
    detector.weight[0, 0, 1, 1] = 1.0
    response = detector(image)
    result = {"conv": [], "pooled": []}
    for shift in range(pool + 1):
        moved = detector(torch.roll(image, (shift, shift), dims=(2, 3)))
        result["conv"].append(_changed(response > 0.75, moved > 0.75))
        pooled, pooled_moved = max_pool2d(response, pool), max_pool2d(moved, pool)
        result["pooled"].append(_changed(pooled > 0.75, pooled_moved > 0.75))
    return result


@torch.no_grad()
def _random_shifts(ctx: Context, pools: tuple[int, ...], shifts: int) -> dict[str, list[float]]:
    """Changed detections (the top 10% of each image's map) after shifting white-noise images
    right by 0..shifts pixels: a random 5x5 conv + ReLU map, alone and max-pooled."""
    generator = ctx.manual_seed(3)
    count, side = (32, 48) if ctx.quick else (128, 64)
    conv = nn.Conv2d(1, 8, 5, padding=2, padding_mode="circular")  # circular: exact shifts
    images = torch.randn(count, 1, side, side, generator=generator)
    maps = {"conv": lambda x: torch.relu(conv(x))}
    for pool in pools:
        maps[f"conv+maxpool{pool}"] = lambda x, p=pool: max_pool2d(torch.relu(conv(x)), p)
    result = {}
    for label, run in maps.items():
        before = run(images)
        threshold = torch.quantile(before.flatten(1), 0.9, dim=1).view(-1, 1, 1, 1)
        shifted = [run(torch.roll(images, shift, dims=3)) for shift in range(shifts + 1)]
        result[label] = [_changed(before > threshold, after > threshold) for after in shifted]
    return result


@topic(
    7,
    "pooling",
    "Pooling and translation",
    "After p x p max pooling, a feature detected anywhere in a window is still detected when "
    "the input shifts by up to p - 1 pixels within it: pooling buys local translation "
    "invariance.",
    """A max pool reports the largest response in each p x p window and forgets where in the
    window it was, so a detection that moves within its window leaves the pooled map unchanged
    (LeCun et al. 1998 and Boureau et al. 2010 on pooling; Goodfellow et al., Deep Learning,
    section 9.3). The experiment first places isolated bright pixels at the corners of pooling
    cells, detects them with a 3x3 blob detector and shifts them by 0..p pixels: the detector
    map changes at every shift, the pooled detections only when the peaks leave their window.
    Then, on white-noise images through a random 5x5 conv and ReLU, it counts how many of the
    strongest 10% of responses change as the input shifts, without pooling and after 2x2 and
    4x4 max pooling.""",
)
def pooling(ctx: Context) -> Finding:
    generator = ctx.manual_seed(4)
    peaks = {pool: _peak_shifts(pool, generator) for pool in (2, 3, 4)}
    shifts = 8
    pools = (2, 4)
    random = _random_shifts(ctx, pools, shifts)
    figures = save_curves(
        ctx.figure_path("sensitivity"),
        {label: (list(range(shifts + 1)), values) for label, values in random.items()},
        "Changed top-10% detections after shifting random inputs",
        "shift (pixels)",
        "changed detections (Jaccard distance)",
    )
    kept = max(max(p["pooled"][:pool]) for pool, p in peaks.items())
    lost_unpooled = min(min(p["conv"][1:]) for p in peaks.values())
    lost_beyond = min(p["pooled"][pool] for pool, p in peaks.items())
    conv, pool2, pool4 = random["conv"], random["conv+maxpool2"], random["conv+maxpool4"]
    less = all(random[f"conv+maxpool{p}"][s] < conv[s] for p in pools for s in range(1, p))
    verdict = (
        f"Aligned peaks shifted by up to p - 1 pixels (p = 2, 3, 4) change {kept:.0%} of the "
        f"pooled detections but {at_least(lost_unpooled)} of the unpooled ones; a shift by p "
        f"changes {at_least(lost_beyond)} of the pooled ones. On random inputs a 1-pixel "
        f"shift changes {conv[1]:.0%} of the conv map's top detections, {pool2[1]:.0%} after 2x2 "
        f"pooling and {pool4[1]:.0%} after 4x4 (2 and 3 pixels: {conv[2]:.0%} and {conv[3]:.0%} "
        f"vs {pool4[2]:.0%} and {pool4[3]:.0%} with 4x4); a shift by p undoes the gain "
        f"({pool2[2]:.0%} with 2x2, {pool4[4]:.0%} with 4x4)."
    )
    return Finding(
        numbers={
            "aligned_peaks": {f"p={pool}": p for pool, p in peaks.items()},
            "random_inputs": random,
            "pooled_changed_within_window": kept,
            "unpooled_changed_min": lost_unpooled,
            "pooled_less_sensitive_below_p": less,
        },
        holds=kept == 0 and lost_unpooled > 0 and lost_beyond > 0 and less,
        verdict=verdict,
        figures=figures,
    )
