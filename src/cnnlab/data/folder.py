"""Image-folder datasets: the user's own PNG/JPEG images, one subfolder per class.

Layout. Which files are read, their classes and labels, and how `split` picks a train/, val/ or
test/ folder: see `cnnlab.data.folder_layout`.

Files. Each image file must really be PNG or JPEG (checked from its first bytes, then opened
with Pillow restricted to those two decoders) and decode completely: an empty file, other
content (GIF, text, ...), a truncated or corrupt file, or a decompression bomb (more pixels than
`max_pixels`, default Pillow's `Image.MAX_IMAGE_PIXELS`; Pillow's global limit applies too) is a
*bad image*. Before decoding, the file must hold the pixel data its header declares
(`pixeldata`: exact for PNG, a lower bound for JPEG), because Pillow would allocate the declared
size and pad a short stream silently. `on_error="fail"` raises DataFormatError naming the file
and what was found; `on_error="skip"` leaves it out and lists it in the FolderReport, beside the
entries the listing ignored. Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (it is
checked, never changed).

Pixels. Images become uint8 with 1 channel (Pillow "L") or 3 ("RGB"); by default 3 if any image
is colour, else 1 (grayscale images are then repeated over 3 channels). Palette images count as
colour only when their palette has a non-gray entry. Transparency (RGBA, LA, PA, a tRNS chunk)
is composited onto black, i.e. colours are premultiplied by alpha. 16-bit grayscale keeps its
top 8 bits. Colour to gray uses Pillow's ITU-R 601-2 luma. All images must share one size
unless `image_size=(H, W)` is given; they are then resized with Pillow's bilinear filter,
whose support widens when shrinking (antialiased).

Two ways in: `load_image_folder` decodes everything into one ImageSet in memory
(`load_image_folder_with_report` also returns the FolderReport); `ImageFolderStream` is a
map-style `torch.utils.data.Dataset` for folders too large for memory, decoding one image per
item in DataLoader workers. Formats: PNG (ISO/IEC 15948), JPEG/JFIF (ITU-T T.81, JFIF 1.02).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnlab.data.dataset import ImageSet
from cnnlab.data.decode_cache import STALE, CacheEntry
from cnnlab.data.folder_decode import decode_listing, size_mismatch
from cnnlab.data.folder_layout import FolderListing, list_folder
from cnnlab.data.image_file import BadImage, decode_image, probe
from cnnlab.errors import DataError, DataFormatError

ON_ERROR = ("fail", "skip")


@dataclass
class FolderReport:
    """What reading a folder did: the class-folder tree read, images kept, files left out."""

    root: Path  # the class-folder tree that was read (the folder, or its split folder)
    classes: list[str]
    kept: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # bad images and why
    ignored: list[Path] = field(default_factory=list)  # not .png/.jpg/.jpeg, or nested folders
    cache: str = "off"  # the decoded images were "read" from the cache, or "decoded" (and cached)
    names: list[str] = field(default_factory=list)  # the kept images' paths relative to `root`

    def summary(self, listed: int = 10) -> str:
        """One line of counts, then the first `listed` skipped files with their reasons."""
        lines = [
            f"{self.root}: {self.kept} images in {len(self.classes)} classes, "
            f"{len(self.skipped)} bad images skipped, {len(self.ignored)} other entries ignored",
            *(f"skipped {path}: {why}" for path, why in self.skipped[:listed]),
        ]
        if len(self.skipped) > listed:
            lines.append(f"... and {len(self.skipped) - listed} more skipped")
        return "\n".join(lines)


def load_image_folder(
    path: str | Path,
    split: str | None = None,
    on_error: str = "fail",
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    cache: bool = True,
) -> ImageSet:
    """Load a folder of class subfolders into memory (see the module docstring for the rules).

    With on_error="skip", skipped images are announced in a UserWarning; use
    load_image_folder_with_report to get them as data.
    """
    images, report = load_image_folder_with_report(
        path, split, on_error, image_size, channels, max_pixels, progress, cache
    )
    if report.skipped:
        warnings.warn(report.summary(), UserWarning, stacklevel=2)
    return images


def load_image_folder_with_report(
    path: str | Path,
    split: str | None = None,
    on_error: str = "fail",
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    cache: bool = True,
) -> tuple[ImageSet, FolderReport]:
    """load_image_folder, also returning the FolderReport (skipped and ignored files).

    The decoded images come from the user's cache when the folder has not changed since they
    were cached (`cnnlab.data.decode_cache`); `cache=False` neither reads nor writes it.
    `progress` shows a bar while a large folder is decoded."""
    image_size = _check_options(on_error, image_size, channels, max_pixels)
    listing = list_folder(Path(path), split)
    report = _empty_report(listing)
    options = {"on_error": on_error, "image_size": image_size, "channels": channels}
    options["max_pixels"] = max_pixels
    entry = CacheEntry.for_listing(listing, options) if cache else None
    decoded, why_not = entry.read() if entry else (None, "")
    report.cache = "read" if decoded is not None else "decoded" if entry else "off"
    if decoded is None:
        decoded = decode_listing(listing, channels, image_size, max_pixels, on_error, progress)
        if why_not and why_not != STALE:
            warnings.warn(f"{entry.path}: {why_not}; decoded the folder again", stacklevel=2)
        if entry and len(decoded.labels) and (problem := entry.write(decoded)):
            warnings.warn(f"decoded images not cached: {problem}", stacklevel=2)
    report.skipped = [(listing.root / name, why) for name, why in decoded.skipped]
    left_out = {name for name, _ in decoded.skipped}
    report.names = [name for name in listing.relative_names() if name not in left_out]
    if not len(decoded.labels):
        raise DataError(f"{listing.root}: no image could be read; {report.summary()}")
    report.kept = len(decoded.labels)
    return ImageSet(listing.name, decoded.images, decoded.labels, listing.classes), report


class ImageFolderStream(torch.utils.data.Dataset):
    """A class-folder tree read one image per item: (uint8 C x H x W tensor, int label).

    The constructor lists the files and reads every header (not the pixels): bad headers follow
    `on_error`, the channel count is inferred and, without `image_size`, every image must have
    the same size. Damage found only when decoding (a truncated file) raises DataFormatError
    from `__getitem__` whatever `on_error` says: a map-style dataset cannot drop an item.
    The state is plain lists, tensors and numbers, so it pickles into DataLoader workers.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        on_error: str = "fail",
        image_size: tuple[int, int] | None = None,
        channels: int | None = None,
        max_pixels: int | None = None,
    ):
        self.image_size = _check_options(on_error, image_size, channels, max_pixels)
        listing = list_folder(Path(path), split)
        self.report = _empty_report(listing)
        files, labels, colour = [], [], False
        first: tuple[Path, tuple[int, int]] | None = None
        for file, label in zip(listing.files, listing.labels, strict=True):
            try:
                height, width, is_colour = probe(file, max_pixels)
            except BadImage as bad:
                _handle_bad(file, bad, on_error, self.report)
                continue
            if first is None:
                first = (file, (height, width))
            elif self.image_size is None and (height, width) != first[1]:
                raise size_mismatch(first, (file, (height, width)))
            files.append(str(file))
            labels.append(label)
            colour = colour or is_colour
        if first is None:
            raise DataError(f"{listing.root}: no image could be read; {self.report.summary()}")
        self.report.kept = len(files)
        self.name, self.classes, self.files = listing.name, listing.classes, files
        self.labels = torch.tensor(labels)
        self.channels = channels or (3 if colour else 1)
        self.size = self.image_size or first[1]  # (H, W) of every item
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        file = Path(self.files[index])
        try:
            array = decode_image(file, self.channels, self.image_size, self.max_pixels)
        except BadImage as bad:
            raise DataFormatError(bad.message(file)) from None
        if array.shape[:2] != self.size:
            raise DataFormatError(
                f"{file}: expected a {self.size[0]}x{self.size[1]} image (the size when the "
                f"folder was scanned), found {array.shape[0]}x{array.shape[1]}"
            )
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), int(self.labels[index])


# ---- the in-memory set ------------------------------------------------------------------------


def _empty_report(listing: FolderListing) -> FolderReport:
    return FolderReport(listing.root, listing.classes, ignored=list(listing.ignored))


def _handle_bad(file: Path, bad: BadImage, on_error: str, report: FolderReport) -> None:
    if on_error == "fail":
        raise DataFormatError(f"{bad.message(file)} (on_error='skip' leaves bad images out)")
    report.skipped.append((file, bad.found))


def _check_options(
    on_error: str,
    image_size: tuple[int, int] | None,
    channels: int | None,
    max_pixels: int | None,
) -> tuple[int, int] | None:
    """Refuse bad arguments; return image_size as a tuple of two ints (or None)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, found {on_error!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, found {channels!r}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, found {max_pixels}")
    if image_size is None:
        return None
    size = tuple(int(side) for side in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (H, W) with positive sides, found {image_size!r}")
    return size
