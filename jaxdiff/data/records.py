"""What every image source yields and shares: the record layout, in-memory arrays, one-line errors.

A record is ``{"image": uint8 [S, S, C], "label": int32 scalar}``; a source is grain's random-access
protocol (``len`` + ``__getitem__``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["ArraySource", "ImageSource", "first_line", "make_record"]


class ImageSource(Protocol):
    """What the pipeline needs from a source (grain's ``RandomAccessDataSource`` protocol)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (for one-line UserErrors)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def make_record(image: np.ndarray, label: Any) -> dict[str, np.ndarray]:
    """A source record; ``label`` becomes int32 when it is an integer scalar, else 0."""
    label = np.asarray(label) if label is not None else None
    if label is None or label.shape != () or not np.issubdtype(label.dtype, np.integer):
        label = 0
    return {"image": image, "label": np.int32(label)}


class ArraySource:
    """Images held in memory: uint8 ``[N, S, S, C]`` and int32 labels ``[N]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str):
        assert images.dtype == np.uint8 and images.ndim == 4 and len(labels) == len(images)
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource({self.name}, n={len(self)}, image={self.images.shape[1:]})"
