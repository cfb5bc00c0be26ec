"""Image checks at the door, and the one way every later stage opens an image.

``inspect_image`` fully decodes the bytes and reports what they are, or raises ``ImageRejected``
with a short reason code. ``to_rgb`` turns any decoded image (CMYK, 16-bit, palette, alpha,
EXIF-rotated) into the upright 8-bit RGB view that models and builders see.

>>> import io
>>> from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("RGB", (4, 3), "red").save(buffer, format="PNG")
>>> inspect_image(buffer.getvalue())
ImageInfo(width=4, height=3, mode='RGB', format='PNG', orientation=1, n_frames=1)
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif",
})
_EXIF_ORIENTATION = 0x0112

# Reason codes a quarantined entry can carry.
REJECTION_REASONS = {
    "empty": "the file has no bytes",
    "unreadable": "the bytes could not be read (missing file, permissions, I/O error, download failure)",
    "not-a-file": "the path is not a regular file (a FIFO, device, socket or folder), so it is never opened",
    "too-large": "a download is larger than the byte cap",
    "timed-out": "a download did not finish within its deadline",
    "not-an-image": "no image format recognises the bytes",
    "truncated": "the image ends before its data does",
    "corrupt": "the image format was recognised but decoding failed",
    "too-many-pixels": "width x height exceeds the pixel limit (decompression bomb guard)",
    "path-escape": "a manifest path points outside the manifest's root",
    "bad-entry": "the source row itself is malformed (missing path, bad label value)",
}


class ImageRejected(Exception):  # noqa: N818 - it is a verdict on the input, not a program error
    """An entry that cannot become an item; ``reason`` is a key of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a full decode found: size as stored, mode, format, EXIF orientation, frame count."""

    width: int
    height: int
    mode: str
    format: str
    orientation: int = 1
    n_frames: int = 1


def pil_open(source: Any) -> Image.Image:
    """Pillow's own ``Image.open``. ultralytics replaces ``PIL.Image.open`` with a wrapper that, on
    any file Pillow cannot identify, tries to install and import ``pi-heif``; unwrapping it keeps a
    non-image a clean ``UnidentifiedImageError`` whatever was imported before."""
    opener = Image.open
    while getattr(opener, "__module__", "PIL.Image") != "PIL.Image":
        inner = getattr(sys.modules.get(opener.__module__), "_image_open", None)
        if inner is None or inner is opener:
            break
        opener = inner
    return opener(source)


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode ``data`` completely and describe it, or raise ``ImageRejected``."""
    if not data:
        raise ImageRejected("empty", "0 bytes")
    _let_our_pixel_limit_decide(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = pil_open(io.BytesIO(data))
        except (UnidentifiedImageError, ImportError) as error:
            raise ImageRejected("not-an-image", "no installed image decoder recognises the bytes") from error
        except Image.DecompressionBombError as error:
            raise ImageRejected("too-many-pixels", str(error)) from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise _decode_failure(error) from error
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("too-many-pixels",
                                    f"{width} x {height} = {width * height:,} pixels > limit {max_pixels:,}")
            if width <= 0 or height <= 0:
                raise ImageRejected("corrupt", f"impossible size {width} x {height}")
            try:
                image.load()
            except Image.DecompressionBombError as error:
                raise ImageRejected("too-many-pixels", str(error)) from error
            except (OSError, SyntaxError, ValueError, EOFError) as error:
                raise _decode_failure(error) from error
            try:
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
            except (OSError, ValueError, SyntaxError):
                orientation = 1  # unreadable EXIF does not spoil the pixels
            return ImageInfo(width, height, image.mode, image.format or "unknown",
                             orientation if 1 <= orientation <= 8 else 1,
                             int(getattr(image, "n_frames", 1)))


def _let_our_pixel_limit_decide(max_pixels: int) -> None:
    """Pillow refuses, while opening, any image over twice ``Image.MAX_IMAGE_PIXELS`` (178,956,970 by
    default). Raise that limit (never lower it) so that ``max_pixels`` is the limit that applies."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and 2 * pillow_limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def _decode_failure(error: Exception) -> ImageRejected:
    truncated = isinstance(error, EOFError) or "truncat" in str(error).lower()
    return ImageRejected("truncated" if truncated else "corrupt", f"{type(error).__name__}: {error}")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The upright 8-bit RGB view of any image: EXIF orientation applied, alpha composited on
    ``background``, CMYK converted, 16-bit and float images scaled to 0-255.
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            low, high = float(array.min(initial=0)), float(array.max(initial=0))
            array, top = array - low, (high - low) or 1.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(source: bytes | str | Path) -> Image.Image:
    """Open image bytes or a file as the upright RGB view (see ``to_rgb``)."""
    with pil_open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as image:
        image.load()
        return to_rgb(image)
