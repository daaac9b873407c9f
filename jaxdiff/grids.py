"""Image grids and denoising-process strips as PNG files.

Images are NHWC float in ``[-1, 1]`` (values outside are clipped). They are mapped to uint8 like diffusers'
``numpy_to_pil``: ``round(clip(x / 2 + 0.5, 0, 1) * 255)``. One channel is saved as grayscale, three as RGB.
Small images are upscaled with nearest-neighbour pixels so a grid of 16x16 digits is viewable.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image

from jaxdiff.errors import UserError

__all__ = [
    "to_uint8",
    "make_grid",
    "save_grid",
    "make_process_strip",
    "save_process_strip",
    "rows_by_class",
]

# Upscale images smaller than this (pixels per side) by an integer factor.
_MIN_VIEW_SIZE = 64


def to_uint8(images: Any) -> np.ndarray:
    """``[..., H, W, C]`` float in ``[-1, 1]`` -> uint8 in ``[0, 255]``."""
    x = np.asarray(images, dtype=np.float32)
    return np.round(np.clip(x / 2 + 0.5, 0.0, 1.0) * 255).astype(np.uint8)


def _check_images(images: np.ndarray, ndim: int, what: str) -> None:
    if images.ndim != ndim or images.shape[-1] not in (1, 3):
        raise UserError(
            f"{what} must be {'[S, ' if ndim == 5 else '['}N, H, W, C] with C in (1, 3); got {images.shape}"
        )


def _default_upscale(height: int, width: int) -> int:
    return max(1, math.ceil(_MIN_VIEW_SIZE / max(1, min(height, width))))


def make_grid(
    images: Any, *, nrow: int | None = None, padding: int = 2, upscale: int | None = None
) -> np.ndarray:
    """Tile ``[N, H, W, C]`` images in ``[-1, 1]`` into one uint8 ``[rows*(h+p)+p, ncol*(w+p)+p, C]`` image.

    Args:
      images: ``[N, H, W, C]``, ``C`` 1 or 3.
      nrow: images per row (default ``ceil(sqrt(N))``).
      padding: pixels of black between and around images (after upscaling).
      upscale: integer nearest-neighbour factor (default: enough to make each image >= 64 pixels).
    """
    x = to_uint8(images)
    _check_images(x, 4, "images")
    n, h, w, c = x.shape
    scale = _default_upscale(h, w) if upscale is None else int(upscale)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / ncol))
    grid = np.zeros((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def rows_by_class(images: Any, labels: Any) -> tuple[np.ndarray, int]:
    """Reorder ``[N, H, W, C]`` images so that each grid row holds one class: the classes in order of first
    appearance in ``labels`` (int ``[N]``), each row its images in their order. Returns ``(images, ncol)``
    with ``ncol`` the largest class count; shorter rows are padded with blank (black, -1) images.

    For ``labels[i] = class_labels[i % K]`` and ``N = K * n`` that is K rows of n images.
    """
    x = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if labels.shape != x.shape[:1]:
        raise UserError(f"labels {labels.shape} must be [N] for images {x.shape}")
    order = list(dict.fromkeys(labels.tolist()))
    groups = [x[labels == c] for c in order]
    ncol = max(len(g) for g in groups)
    blank = np.full((1, *x.shape[1:]), -1.0, np.float32)
    rows = [np.concatenate([g, np.repeat(blank, ncol - len(g), axis=0)]) for g in groups]
    return np.concatenate(rows), ncol


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 ``[H, W, C]`` image (C = 1 or 3) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _save_png(path: str | os.PathLike, array: np.ndarray) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    # Write then rename, so a reader (or an interrupted run) never sees half a PNG.
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(png_bytes(array))
    os.replace(tmp, path)
    return path


def save_grid(
    path: str | os.PathLike,
    images: Any,
    *,
    nrow: int | None = None,
    padding: int = 2,
    upscale: int | None = None,
) -> str:
    """Save ``[N, H, W, C]`` images in ``[-1, 1]`` as one PNG grid (:func:`make_grid`); returns the path."""
    return _save_png(path, make_grid(images, nrow=nrow, padding=padding, upscale=upscale))


def make_process_strip(frames: Any, *, padding: int = 2, upscale: int | None = None) -> np.ndarray:
    """``[S, N, H, W, C]`` (S snapshots of N images, e.g. x_t over the sampling steps) -> uint8 image with one
    row per image and one column per snapshot, time running left to right."""
    x = np.asarray(frames, dtype=np.float32)
    _check_images(x, 5, "frames")
    s, n = x.shape[:2]
    # Row-major order of the grid: image i's snapshots fill row i.
    tiles = np.swapaxes(x, 0, 1).reshape(n * s, *x.shape[2:])
    return make_grid(tiles, nrow=s, padding=padding, upscale=upscale)


def save_process_strip(
    path: str | os.PathLike, frames: Any, *, padding: int = 2, upscale: int | None = None
) -> str:
    """Save ``[S, N, H, W, C]`` snapshots as a PNG strip (:func:`make_process_strip`); returns its path."""
    return _save_png(path, make_process_strip(frames, padding=padding, upscale=upscale))
