"""The one reader of a user's image files: every path that decodes an image file (image folders in RAM or lazily,
WebDataset shards, stream chunks that are folders, and through them embedding, neighbours, selection and evaluation
of a folder) calls :func:`read_image`.

What it does to a file, in order:

* the pixel limit: an image over ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's ``DecompressionBombWarning``, turned into an
  error, or its ``DecompressionBombError`` at twice the limit) is refused like any unreadable file;
* reduced-size JPEG decoding: when the target size is at most half the image's shorter side, libjpeg decodes at 1/2,
  1/4 or 1/8 scale (``Image.draft``), the largest reduction that keeps the shorter side at or above the target, so
  the centre crop and the one resize below still work from at least the target's pixels (tolerance: see
  :func:`read_image`);
* the first frame of an animated image (GIF, WebP, APNG);
* the EXIF orientation applied (``ImageOps.exif_transpose``);
* transparency (RGBA, LA, PA, palette or grey/RGB images with ``transparency`` info) composited onto the
  ``background`` colour (``data.background``, default white) rather than dropped, which would show the colour hidden
  under transparent pixels;
* 16-bit (``I;16``, ``I;16B``, ``I``: 0–65535) and float (``F``: 0–1) images scaled to 8 bits by that range,
  not clipped;
* conversion to grey (``L``) or RGB (CMYK, palette, grey and the rest by Pillow's ``convert``);
* a non-square image cropped to its central square and resized once to ``size`` × ``size`` (bilinear).

An ordinary 8-bit RGB or grey PNG, or a JPEG no larger than twice the target, decodes exactly as before this module.
Any failure is one :class:`DataError` line naming the file (``cannot read image NAME: reason``), which callers skip
under ``data.skip_bad_images``. Warnings Pillow raises while decoding are not left as Python warnings: each becomes
one line on the ``selfsup`` logger naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import struct
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageColor, ImageOps

from ..config import Config, register_check
from ..errors import ConfigError, DataError

log = logging.getLogger("selfsup")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
WHITE = (255, 255, 255)
GREY_MODES = {"1", "L", "LA", "La", "I", "F"}  # plus every I;16 variant: images read as one channel by default
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# what a broken, truncated, oversized or exotic file raises while it is opened, decoded or converted
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
               Image.DecompressionBombWarning)

Colour = str | Sequence[int]


@functools.lru_cache(maxsize=64)
def _rgb(colour: str | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        try:
            return ImageColor.getrgb(colour)[:3]
        except ValueError:
            raise DataError(f"unknown background colour {colour!r} (a colour name such as 'white' or "
                            f"'#808080', or [r, g, b])") from None
    if len(colour) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in colour):
        raise DataError(f"background colour {list(colour)} must be [r, g, b] with each in 0..255")
    return tuple(int(v) for v in colour)


def background_rgb(colour: Colour) -> tuple[int, int, int]:
    """``colour`` (a Pillow colour name or ``#rrggbb``, or ``[r, g, b]``) as an (r, g, b) tuple."""
    return _rgb(colour if isinstance(colour, str) else tuple(colour))


@register_check
def check_background(cfg: Config) -> None:
    """``data.background`` is a colour Pillow knows; else ConfigError naming the key."""
    try:
        background_rgb(cfg.data.background)
    except DataError as e:
        raise ConfigError(f"config error: data.background: {e}") from None


def default_channels(mode: str) -> int:
    """1 for the grey modes (with or without alpha, 16-bit and float), else 3."""
    return 1 if mode in GREY_MODES or mode.startswith("I;16") else 3


def _draft(im: Image.Image, size: int | None, channels: int | None) -> None:
    """Reduced-size JPEG decoding: libjpeg decodes at the largest of 1/2, 1/4, 1/8 scale that keeps both sides
    ≥ ``size`` (``draft`` picks scale s ≤ min(W // size, H // size), so ⌈W/s⌉, ⌈H/s⌉ ≥ size); only when the image
    is at least twice the target on its shorter side. For one channel from an RGB JPEG, only the luma is decoded."""
    if size is None or im.format != "JPEG" or min(im.size) < 2 * size:
        return
    im.draft("L" if channels == 1 else "RGB", (size, size))


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit (0–65535) or float (0–1) image as 8-bit grey, scaled by that range (out-of-range values clip)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0).clip(0, 1) * 255
    else:
        a = a.astype(np.float64).clip(0, 65535) / 257
    return Image.fromarray(np.round(a).astype(np.uint8))


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """The image over an opaque ``background`` (RGB): a transparent pixel becomes the background, whatever colour
    the file stores under it."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")


def convert_mode(im: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """``im`` as ``L`` (channels 1) or ``RGB`` (3): 16-bit / float scaled to 8 bits, transparency composited onto
    ``background``, everything else through Pillow's ``convert`` (CMYK, palette, grey, bilevel...)."""
    if im.mode == "F" or im.mode == "I" or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    elif im.mode in ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        im = _composite(im, background)
    mode = "L" if channels == 1 else "RGB"
    return im if im.mode == mode else im.convert(mode)


def _fit(im: Image.Image, size: int) -> Image.Image:
    """The central square of a non-square image, resized once (bilinear) to ``size`` × ``size``."""
    if im.size == (size, size):
        return im
    if im.size[0] != im.size[1]:
        return ImageOps.fit(im, (size, size), Image.BILINEAR)
    return im.resize((size, size), Image.BILINEAR)


def _opened(source):
    """``source`` opened with Pillow; a PIL image already open is read from a copy (the caller's stays as it is)."""
    return contextlib.nullcontext(source.copy()) if isinstance(source, Image.Image) else Image.open(source)


def _decode(source, size: int | None, channels: int | None, background: tuple[int, int, int]):
    with _opened(source) as im:  # the first frame of an animated image
        _draft(im, size, channels)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        channels = channels or default_channels(im.mode)
        out = convert_mode(im, channels, background)
        size = size or out.size[0]
        a = np.asarray(_fit(out, size), dtype=np.uint8)
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), channels, size


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_image(source, size: int | None = None, channels: int | None = None, background: Colour = WHITE,
               name: str | None = None) -> tuple[np.ndarray, int, int]:
    """Decode one image file (a path, a file object or an open PIL image) as described in the module's docstring:
    converted to ``channels`` (1 or 3; default from the image's mode), its central square resized to ``size`` ×
    ``size`` (default: its own width), transparency over ``background``. Returns (C×H×W uint8 array, channels, size).

    Tolerance of the reduced-size JPEG decoding against decoding at full size and resizing: a mean absolute
    difference under 3/255 per pixel on smooth, photo-like content (tests/test_image_reader.py checks it); fine
    texture near the target's Nyquist limit may differ more, as between any two resampling filters.

    Raises :class:`DataError` ``cannot read image NAME: reason`` (``name`` defaults to the path) for any file that
    cannot be read, including one over Pillow's pixel limit."""
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<bytes>"))
    rgb = background_rgb(background)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            result = _decode(source, size, channels, rgb)
        except READ_ERRORS as e:
            raise DataError(f"cannot read image {name}: {_one_line(e)}") from None
    for message in dict.fromkeys(_one_line(w.message) for w in caught):
        log.warning("image %s: %s", name, message)
    return result
