"""What a dataset holds, split by split: counts per class, per-channel statistics, and a grid of
samples."""

from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw

from cnnlab.data.dataset import ImageSet
from cnnlab.fileio import atomic_path


def dataset_info(data: ImageSet) -> dict:
    """Counts per class, image size, and mean/std per channel in [0, 1] units."""
    mean, std = data.mean_std()
    counts = data.class_counts().tolist()
    return {
        "name": data.name,
        "images": len(data),
        "image_size": list(data.image_size),
        "classes": len(data.classes),
        "per_class": dict(zip(data.classes, counts, strict=True)),
        "mean": [round(v, 4) for v in mean.tolist()],
        "std": [round(v, 4) for v in std.tolist()],
    }


def splits_info(dataset: str, infos: dict[str, dict]) -> dict:
    """The report on several splits: the dataset as named, its images over all the splits, and
    `dataset_info` of each split under its name ("train", "val", "test", or "all")."""
    total = sum(info["images"] for info in infos.values())
    return {"dataset": dataset, "images": total, "splits": infos}


def format_splits_info(report: dict) -> str:
    """Each split's `format_info`, after a line of totals when there are several."""
    splits = report["splits"]
    blocks = [format_info(info) for info in splits.values()]
    if len(blocks) == 1:
        return blocks[0]
    counts = ", ".join(f"{split} {info['images']:,}" for split, info in splits.items())
    total = f"{report['dataset']}: {report['images']:,} images in {len(splits)} splits ({counts})"
    return "\n\n".join([total, *blocks])


def format_info(info: dict) -> str:
    width = max(len(name) for name in info["per_class"])
    lines = [
        f"{info['name']}: {info['images']:,} images of "
        f"{'x'.join(map(str, info['image_size']))} (CxHxW), {info['classes']} classes",
        f"mean per channel: {', '.join(f'{v:.4f}' for v in info['mean'])}",
        f"std per channel:  {', '.join(f'{v:.4f}' for v in info['std'])}",
        "images per class:",
        *(f"  {name.ljust(width)}  {count:>8,}" for name, count in info["per_class"].items()),
    ]
    return "\n".join(lines)


def sample_grid(data: ImageSet, per_class: int = 8, seed: int = 0, scale: int = 2) -> Image.Image:
    """One row per class (its name on the left), `per_class` random images of it, enlarged."""
    generator = torch.Generator().manual_seed(seed)
    _, height, width = data.image_size
    cell_h, cell_w = height * scale, width * scale
    label_w = 8 + 7 * max(len(name) for name in data.classes)
    grid = Image.new("RGB", (label_w + per_class * (cell_w + 2), len(data.classes) * (cell_h + 2)))
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(data.classes):
        top = row * (cell_h + 2)
        draw.text((4, top + cell_h // 2 - 6), name, fill=(255, 255, 255))
        members = (data.labels == row).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[:per_class]]
        for col, index in enumerate(chosen.tolist()):
            tile = _to_pil(data.images[index]).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (label_w + col * (cell_w + 2), top))
    return grid


def save_grid(data: ImageSet, path: str | os.PathLike, per_class: int = 8, seed: int = 0) -> None:
    with atomic_path(path) as temp:
        sample_grid(data, per_class, seed).save(temp, format="PNG")


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0]).convert("RGB")
    return Image.fromarray(array)
