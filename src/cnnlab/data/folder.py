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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from cnnlab.data.dataset import ImageSet
from cnnlab.data.folder_layout import FolderListing, list_folder
from cnnlab.data.pixeldata import jpeg_problem, png_problem
from cnnlab.errors import DataError, DataFormatError

ON_ERROR = ("fail", "skip")

_PILLOW_FORMATS = ("PNG", "JPEG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# Only to say what a misnamed file really is; such files are refused before Pillow sees them.
_OTHER_SIGNATURES = {b"GIF8": "GIF", b"BM": "BMP", b"II*": "TIFF", b"MM\x00*": "TIFF"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# What Pillow raises on a file it cannot parse (SyntaxError: "broken PNG file" and the like).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError)


@dataclass
class FolderReport:
    """What reading a folder did: the class-folder tree read, images kept, files left out."""

    root: Path  # the class-folder tree that was read (the folder, or its split folder)
    classes: list[str]
    kept: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # bad images and why
    ignored: list[Path] = field(default_factory=list)  # not .png/.jpg/.jpeg, or nested folders

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
) -> ImageSet:
    """Load a folder of class subfolders into memory (see the module docstring for the rules).

    With on_error="skip", skipped images are announced in a UserWarning; use
    load_image_folder_with_report to get them as data.
    """
    images, report = load_image_folder_with_report(
        path, split, on_error, image_size, channels, max_pixels
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
) -> tuple[ImageSet, FolderReport]:
    """load_image_folder, also returning the FolderReport (skipped and ignored files)."""
    image_size = _check_options(on_error, image_size, channels, max_pixels)
    listing = list_folder(Path(path), split)
    arrays, labels, report = [], [], _empty_report(listing)
    first: tuple[Path, tuple[int, ...]] | None = None  # to name two files in a size mismatch
    for file, label in zip(listing.files, listing.labels, strict=True):
        try:
            array = decode_image(file, channels, image_size, max_pixels)
        except BadImage as bad:
            _handle_bad(file, bad, on_error, report)
            continue
        if first is None:
            first = (file, array.shape[:2])
        elif array.shape[:2] != first[1]:
            raise _size_mismatch(first, (file, array.shape[:2]))
        arrays.append(array)
        labels.append(label)
    if not arrays:
        raise DataError(f"{listing.root}: no image could be read; {report.summary()}")
    report.kept = len(arrays)
    return ImageSet(listing.name, _stack(arrays), torch.tensor(labels), listing.classes), report


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
                height, width, is_colour = _probe(file, max_pixels)
            except BadImage as bad:
                _handle_bad(file, bad, on_error, self.report)
                continue
            if first is None:
                first = (file, (height, width))
            elif self.image_size is None and (height, width) != first[1]:
                raise _size_mismatch(first, (file, (height, width)))
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


# ---- reading one image -----------------------------------------------------------------------


class BadImage(Exception):
    """One bad image file; `found` says what is wrong with it."""

    def __init__(self, found: str):
        super().__init__(found)
        self.found = found

    def message(self, path: Path) -> str:
        return f"{path}: expected a PNG or JPEG image, found {self.found}"


def _probe(path: Path, max_pixels: int | None) -> tuple[int, int, bool]:
    """Height, width and colourfulness from the header, without decoding the pixels."""
    with _opened(path, max_pixels) as image:
        return image.height, image.width, _is_colour(image)


def decode_image(
    path: Path, channels: int | None, image_size: tuple[int, int] | None, max_pixels: int | None
) -> np.ndarray:
    """The whole image as uint8 H x W x C; channels None keeps 1 for gray and 3 for colour."""
    with _opened(path, max_pixels) as image:
        _check_pixel_data(path, image)  # before load() allocates what the header declares
        image.load()  # decode now, so truncation raises here
        channels = channels or (3 if _is_colour(image) else 1)
        image = _convert(image, channels)
        if image_size is not None and image.size != image_size[::-1]:
            image = image.resize(image_size[::-1], Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)
    return array.reshape(image.height, image.width, channels)


@contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """Pillow's lazily opened image, once the file passed every check that precedes decoding;
    any Pillow failure inside the block becomes a BadImage."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError(
            f"{path}: not read: Pillow's ImageFile.LOAD_TRUNCATED_IMAGES is True, which would "
            "let truncated images load silently; expected it False (set it back to False)"
        )
    _check_signature(path)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=_PILLOW_FORMATS) as image:
                _check_pixels(image, max_pixels)
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise BadImage(f"a decompression bomb ({error})") from error
        except _DECODE_ERRORS as error:
            found = f"a corrupt or truncated file ({type(error).__name__}: {error})"
            raise BadImage(found) from error


def _check_signature(path: Path) -> None:
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError as error:
        raise BadImage(f"an unreadable file ({error})") from error
    if not head:
        raise BadImage("an empty file (0 bytes)")
    if head.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE)):
        return
    for signature, kind in _OTHER_SIGNATURES.items():
        if head.startswith(signature):
            raise BadImage(f"{kind} data")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise BadImage(f"unknown data starting with {head[:8]!r}") from None
    raise BadImage(f"text ({text!r}...)")


def _check_pixel_data(path: Path, image: Image.Image) -> None:
    problem = png_problem(path) if image.format == "PNG" else jpeg_problem(path)
    if problem:
        raise BadImage(f"a corrupt or truncated file ({problem})")


def _check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise BadImage(
            f"a decompression bomb ({image.width}x{image.height} = {pixels} pixels, "
            f"over the limit of {limit})"
        )


def _is_colour(image: Image.Image) -> bool:
    if image.mode in ("P", "PA"):
        palette = np.array(image.getpalette("RGB") or [0, 0, 0]).reshape(-1, 3)
        return bool((palette != palette[:, :1]).any())
    return image.mode in _COLOUR_MODES


def _convert(image: Image.Image, channels: int) -> Image.Image:
    """Pillow "L" (channels 1) or "RGB" (channels 3), by the rules in the module docstring."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling. No int64 copy:
        # uint16 ("I;16") or int32 ("I") is enough, so a large image is not copied at 8 bytes/pixel.
        values = np.asarray(image)
        if values.dtype != np.uint16:
            values = np.clip(values, 0, 65535)
        image = Image.fromarray((values >> 8).astype(np.uint8), "L")
    elif image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba).convert("RGB")
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


# ---- the in-memory set ------------------------------------------------------------------------


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """N x C x H x W uint8; gray H x W x 1 arrays broadcast over 3 channels if any is colour."""
    height, width = arrays[0].shape[:2]
    channels = max(array.shape[2] for array in arrays)
    images = np.empty((len(arrays), channels, height, width), dtype=np.uint8)
    for index, array in enumerate(arrays):
        images[index] = array.transpose(2, 0, 1)
    return torch.from_numpy(images)


def _empty_report(listing: FolderListing) -> FolderReport:
    return FolderReport(listing.root, listing.classes, ignored=list(listing.ignored))


def _handle_bad(file: Path, bad: BadImage, on_error: str, report: FolderReport) -> None:
    if on_error == "fail":
        raise DataFormatError(f"{bad.message(file)} (on_error='skip' leaves bad images out)")
    report.skipped.append((file, bad.found))


def _size_mismatch(first: tuple[Path, tuple], other: tuple[Path, tuple]) -> DataError:
    (path_a, (h_a, w_a)), (path_b, (h_b, w_b)) = first, other
    return DataError(
        f"expected images of one size, found {path_a} is {h_a}x{w_a} (H x W) but "
        f"{path_b} is {h_b}x{w_b}; pass image_size=(H, W) to resize them"
    )


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
