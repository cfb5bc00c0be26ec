from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import distinct_image, encode
from PIL import Image

from curate.images import ImageRejected, inspect_image, open_image, to_rgb


def _damaged(data: bytes) -> bytes:
    """The same length, with 50 bytes in the middle of the pixel data overwritten."""
    middle = len(data) // 2
    return data[:middle] + b"\xff" * 50 + data[middle + 50:]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_formats_decode_with_their_size_and_format(fmt: str) -> None:
    info = inspect_image(encode(distinct_image(1, (20, 10)), fmt))
    assert (info.width, info.height, info.format) == (20, 10, fmt)


def test_real_photographs_decode(photos: dict[str, Path]) -> None:
    astronaut = inspect_image(photos["astronaut"].read_bytes())
    assert (astronaut.width, astronaut.height, astronaut.mode) == (512, 512, "RGB")
    china = inspect_image(photos["china"].read_bytes())
    assert (china.width, china.height, china.format) == (640, 427, "JPEG")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is plain text, not pixels", "not-an-image"),
        (encode(distinct_image(2, (64, 64)), "PNG")[:120], "truncated"),
        (encode(distinct_image(3, (64, 64)), "JPEG")[:300], "truncated"),
        (_damaged(encode(distinct_image(4, (64, 64)), "PNG")), "corrupt"),
        (_damaged(encode(distinct_image(5, (64, 64)), "JPEG")), "corrupt"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "damaged-png", "damaged-jpeg"],
)
def test_broken_bytes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data)
    assert caught.value.reason == reason


def test_pixel_limit_refuses_decompression_bombs_before_decoding() -> None:
    bomb = encode(Image.new("1", (4000, 4000)), "PNG")  # 16 M pixels in a few kB
    assert len(bomb) < 10_000
    with pytest.raises(ImageRejected) as caught:
        inspect_image(bomb, max_pixels=1_000_000)
    assert caught.value.reason == "too-many-pixels"
    assert inspect_image(bomb, max_pixels=20_000_000).width == 4000


def test_exif_orientation_is_recorded_and_applied_to_the_rgb_view() -> None:
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(image, "JPEG", exif=exif)
    info = inspect_image(data)
    assert (info.width, info.height, info.orientation) == (40, 20, 6)
    assert open_image(data).size == (20, 40)


def test_cmyk_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)
    assert inspect_image(data).mode == "CMYK"
    red, green, blue = open_image(data).getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_is_scaled_to_8_bit() -> None:
    ramp = np.full((4, 4), 65535, dtype=np.uint16)
    ramp[0, 0] = 0
    data = encode(Image.fromarray(ramp), "PNG")
    assert inspect_image(data).mode.startswith("I")
    view = open_image(data)
    assert view.mode == "RGB"
    assert view.getpixel((0, 0)) == (0, 0, 0) and view.getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency_and_alpha_are_composited_on_white() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    view = open_image(encode(palette, "PNG", transparency=0))
    assert view.getpixel((0, 0)) == (255, 255, 255)
    assert view.getpixel((1, 1)) == (255, 0, 0)
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_unknown_reason_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        ImageRejected("bad-vibes", "no")


def test_non_images_stay_clean_rejections_after_ultralytics_patched_pillow() -> None:
    import PIL.Image
    from ultralytics.utils import patches  # noqa: F401

    import curate.models.detector  # noqa: F401  (imports ultralytics, which wraps PIL.Image.open)

    assert PIL.Image.open.__module__ != "PIL.Image"  # the wrapper is in place
    with pytest.raises(ImageRejected) as caught:
        inspect_image(b"plain text is not an image")
    assert caught.value.reason == "not-an-image"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 1-bit pixels and then ends: cheap at any size."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)[:20])


def test_a_pixel_limit_above_pillows_own_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    huge = _png_header_only(15_000, 12_000)  # 180 M pixels: over Pillow's 178,956,970
    with pytest.raises(ImageRejected) as caught:
        inspect_image(huge)
    assert caught.value.reason == "too-many-pixels"  # the default limit still refuses it
    with pytest.raises(ImageRejected) as caught:
        inspect_image(huge, max_pixels=200_000_000)
    assert caught.value.reason == "truncated"  # allowed in, then found to end early
