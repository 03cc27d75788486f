"""The one way this package opens an image: training, evaluation, ``factorcl-embed`` and
``factorcl-search`` all call :func:`open_image`, so they agree on what decodes and on the
pixels it gives.

* Only regular files are opened: a FIFO or a device named like an image would block (or
  never end) inside ``PIL.Image.open``.
* A decompression bomb (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``; Pillow only warns
  below twice that) is refused like any undecodable file, before its pixels are allocated.
* EXIF orientation is applied (as ``datasets`` does when it decodes).
* High-bit-depth modes (16-bit PNG: ``I;16``, ``I``; float ``F``) are scaled to 8 bits;
  ``convert("RGB")`` would clip them to white.

Every failure is an :class:`UndecodableImageError` (a ``ValueError``) naming the file, so
callers skip and count with one ``except``.
"""

from __future__ import annotations

import os
import stat
import warnings
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["UndecodableImageError", "image_source_name", "open_image", "to_rgb"]


class UndecodableImageError(ValueError):
    """An image that cannot be opened: missing, not a regular file, truncated, not an image,
    or a decompression bomb."""


def image_source_name(value: Any) -> str:
    """A short name of an image value for messages: its path, or ``<bytes>``."""
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return f"<{type(value).__name__}>"


def _regular_file(path: str) -> str:
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the target must be a regular file
    except OSError as error:
        raise UndecodableImageError(f"image file {path!r} cannot be read ({error.strerror or error})") from error
    if not stat.S_ISREG(mode):
        raise UndecodableImageError(f"image file {path!r} is not a regular file (a FIFO, device or folder is "
                                    "never opened)")
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit and 32-bit integer images are scaled by their bit depth
    (a 16-bit PNG's 65535 becomes 255), float images by their range, the rest converted by
    Pillow."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        else:
            # "I;16*" modes hold 16 bits; a 32-bit "I" image from a 16-bit file does too.
            top = 65535.0 if image.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
        scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return image.convert("RGB")


def open_image(value: Any) -> Image.Image:
    """A decoded 8-bit RGB PIL image from a PIL image, a path, or a ``datasets`` image value
    (``{"bytes", "path"}``). Raises :class:`UndecodableImageError` naming the source."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict) and value.get("bytes"):
        source = BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        source = _regular_file(os.fspath(value["path"]))
    elif isinstance(value, (str, os.PathLike)):
        source = _regular_file(os.fspath(value))
    elif value is None or isinstance(value, dict):
        raise UndecodableImageError("the image cell is empty")
    else:
        raise UndecodableImageError(f"an image must be a PIL image, a path or image bytes, got {type(value).__name__}")
    name = image_source_name(value)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are bombs here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened) if opened.getexif().get(0x0112) else opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UndecodableImageError(f"image {name!r} is a decompression bomb ({error})") from error
    except Exception as error:  # Pillow raises many types for bad files
        raise UndecodableImageError(f"image {name!r} cannot be decoded ({type(error).__name__}: {error})") from error
    return to_rgb(image)
