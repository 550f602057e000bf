"""Turn whatever a dataset calls an image into an RGB ``PIL.Image``.

Datasets hand images over in many shapes: a ``PIL.Image`` (the ``datasets`` ``Image``
feature, decoded), raw encoded bytes, the undecoded ``{"bytes": ..., "path": ...}`` dict of
that feature, a file path, or a numpy array. Vision processors want RGB. Everything that
goes wrong here raises a ``ValueError`` that names the column, so the data module can point
at the row and apply its skip-or-raise policy.

Example:
    >>> from PIL import Image
    >>> load_image(Image.new("RGBA", (3, 2)), column="image").mode
    'RGB'
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

__all__ = ["load_image", "to_rgb"]

# Modes that carry an alpha channel; we flatten them onto white, because a transparent
# pixel's stored colour is arbitrary (often black) and would otherwise leak into the model.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# High bit-depth modes that ``Image.convert("RGB")`` clips instead of rescaling.
_WIDE_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def load_image(value: Any, column: str = "image") -> Image.Image:
    """Decode ``value`` into a fully loaded RGB image.

    Args:
        value: a ``PIL.Image``, ``bytes``, a ``{"bytes": ..., "path": ...}`` dict, a path
            (``str`` or ``os.PathLike``), or a ``numpy`` array (``HxW`` or ``HxWxC``).
        column: the column name, used in error messages.

    Raises:
        ValueError: the image is missing, unreadable, empty, or of an unsupported type. The
            message starts with ``"image column '<column>': "``.

    Example:
        >>> load_image({"bytes": None, "path": None}, column="img")
        Traceback (most recent call last):
        ...
        ValueError: image column 'img': image is missing (no bytes and no path)
    """
    prefix = f"image column {column!r}: "
    if value is None:
        raise ValueError(prefix + "image is missing (None)")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            value = data
        elif path:
            value = path
        else:
            raise ValueError(prefix + "image is missing (no bytes and no path)")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) == 0:
                raise ValueError("empty bytes")
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, (str, os.PathLike)):
            if not os.path.isfile(value):
                raise ValueError(prefix + f"file not found: {os.fspath(value)!r}")
            image = Image.open(value)
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        else:
            raise ValueError(prefix + f"unsupported image type {type(value).__name__}")
        # PIL decodes lazily; force it here so a truncated file fails now, with our message,
        # and not later inside the image processor.
        image.load()
        return to_rgb(image)
    except ValueError as err:
        if str(err).startswith(prefix):
            raise
        raise ValueError(prefix + f"cannot decode image ({_qualname(err)}: {err})") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(prefix + f"cannot decode image ({_qualname(err)}: {err})") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as RGB: alpha flattened onto white, 16-bit and float rescaled to 8-bit.

    EXIF orientation is applied, so a photo is seen the way a viewer shows it.

    Example:
        >>> to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
        (255, 255, 255)
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size {image.size}")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not cost us an otherwise good image
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _WIDE_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Rescale a single-channel integer or float array to ``uint8``.

    Floats in [0, 1] are taken as normalised intensities; 16-bit arrays (``I;16`` images) always
    span 0-65535, whatever their values (a dark 16-bit image is dark, not an 8-bit one); 32-bit
    integers (``I`` images, whose bit depth PIL does not keep) as 16-bit when above 255.
    """
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    if np.issubdtype(array.dtype, np.floating) and top <= 1.0:
        values = values * 255.0
    elif array.dtype.itemsize == 2 and np.issubdtype(array.dtype, np.integer) or top > 255.0:
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)


def _qualname(err: BaseException) -> str:
    cls = type(err)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
