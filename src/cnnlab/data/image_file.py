"""Reading one image file: PNG or JPEG only, checked before and while decoding.

The rules (which files are bad images, how pixels become 1 or 3 uint8 channels, resizing) are
those of `cnnlab.data.folder`'s docstring; this module applies them to a single file, and is
what the folder loaders, their parallel decoding and single-image prediction call.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from cnnlab.data.pixeldata import jpeg_problem, png_problem
from cnnlab.errors import DataError

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


# ---- reading one image -----------------------------------------------------------------------


class BadImage(Exception):
    """One bad image file; `found` says what is wrong with it."""

    def __init__(self, found: str):
        super().__init__(found)
        self.found = found

    def message(self, path: Path) -> str:
        return f"{path}: expected a PNG or JPEG image, found {self.found}"


def probe(path: Path, max_pixels: int | None) -> tuple[int, int, bool]:
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
