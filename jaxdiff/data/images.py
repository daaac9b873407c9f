"""Turning any stored image into a uint8 ``[S, S, C]`` array: decode, convert the mode, resize.

Inputs may be encoded bytes (PNG, JPEG, ... anything Pillow reads), a ``PIL.Image``, a numpy array
(``[H, W]`` or ``[H, W, 1|2|3|4]``, uint8 / uint16 / bool / float) or a Hugging Face image dict
(``{"bytes": ..., "path": ...}``). Modes are normalised so that mixed folders work: palette and
alpha images are composited on white, CMYK / YCbCr / LAB / HSV become RGB, 16-bit and float
images are scaled to 8 bits, and RGB becomes grayscale (ITU-R 601 luma) when one channel is asked.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from jaxdiff.errors import UserError

# Bicubic resampling (antialiased when shrinking in Pillow) gave the crispest upsampled digits.
_RESAMPLE = Image.Resampling.BICUBIC
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(file: str | os.PathLike | io.BytesIO, image_size: int) -> Image.Image:
    """Opens and fully decodes an image file; JPEGs are decoded at a reduced scale when that still
    leaves both sides >= ``image_size`` (much faster for large photos, same result after resizing)."""
    with Image.open(file) as img:
        img.draft(None, (image_size, image_size))
        img.load()
        return img.copy()  # closing the file releases the decoded pixels: keep a copy


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scales an integer / bool / float pixel array to uint8 (16-bit -> /257, float in [0, 1] -> x255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.size and np.nanmax(array) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.uint16 or (array.size and array.max() > 255):
            return (np.clip(array, 0, 65535).astype(np.float32) / 257.0).round().astype(np.uint8)
        return np.clip(array, 0, 255).astype(np.uint8)
    raise UserError(f"cannot use image array of dtype {array.dtype}; allowed: integer, bool or float pixels")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise UserError(f"cannot use image array of shape {array.shape}; allowed: [H, W] or [H, W, 1|2|3|4]")
    array = _array_to_uint8(array)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]] if array.ndim == 3 else "L"
    if array.ndim == 3 and array.shape[-1] == 2:
        mode = "LA"
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def as_pil(image: Any, image_size: int) -> Image.Image:
    """Any supported image representation (see the module docstring) as a decoded ``PIL.Image``."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return open_image(io.BytesIO(bytes(image)), image_size)
    if isinstance(image, np.ndarray) and image.dtype.kind in "SO" and image.ndim == 0:
        return as_pil(image.item(), image_size)  # a scalar string tensor holding encoded bytes
    if isinstance(image, np.ndarray):
        return _array_to_pil(image)
    if isinstance(image, dict) and (image.get("bytes") is not None or image.get("path")):
        data = image.get("bytes")
        return as_pil(data, image_size) if data is not None else open_image(image["path"], image_size)
    raise UserError(
        f"cannot use an image of type {type(image).__name__}; allowed: encoded bytes, PIL image, numpy array"
    )


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Converts any Pillow mode to "L" (channels=1) or "RGB" (channels=3)."""
    if img.mode in _16BIT_MODES or img.mode in ("I", "F"):
        img = _array_to_pil(np.asarray(img))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels often hold arbitrary colours: put the picture on white instead.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _resize(img: Image.Image, image_size: int, center_crop: bool) -> Image.Image:
    width, height = img.size
    if (width, height) == (image_size, image_size):
        return img
    box = None
    if center_crop and width != height:
        # Keep the centre square: the same as resizing the shorter side then cropping, in one resample.
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    return img.resize((image_size, image_size), _RESAMPLE, box=box)


def to_uint8_image(image: Any, *, image_size: int, channels: int, center_crop: bool = True) -> np.ndarray:
    """Decodes / converts / resizes one image to uint8 ``[image_size, image_size, channels]``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        array = image[..., None] if image.ndim == 2 else image
        if array.shape == (image_size, image_size, channels):
            return array  # already what is asked: skip Pillow
    img = _resize(_to_mode(as_pil(image, image_size), channels), image_size, center_crop)
    array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array
