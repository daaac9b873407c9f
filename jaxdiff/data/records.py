"""What every image source yields and shares: the record layout, in-memory arrays, one-line errors.

A record is ``{"image": uint8 [S, S, C], "label": int32 scalar}``; a source is grain's random-access
protocol (``len`` + ``__getitem__``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from jaxdiff.errors import UserError

__all__ = ["ArraySource", "ImageSource", "check_labels", "first_line", "make_record"]


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


def check_labels(labels: np.ndarray, num_classes: int | None, where: str) -> None:
    """``UserError`` naming the first label of ``labels`` (int ``[N]``) outside ``0..num_classes-1``
    (``data.num_classes``; None checks nothing). ``where`` names the data in the message."""
    if num_classes is None or labels.size == 0:
        return
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise UserError(
            f"{where} has the label {int(labels[np.argmax(bad)])}, outside data.num_classes={num_classes}; "
            f"allowed: 0..{num_classes - 1} (set data.num_classes to the data's class count)"
        )


class ArraySource:
    """Images held in memory: uint8 ``[N, S, S, C]`` and int32 labels ``[N]``; ``class_names`` (label i is
    ``class_names[i]``) when the labels are classes with known names."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, name: str, class_names: tuple[str, ...] | None = None
    ):
        assert images.dtype == np.uint8 and images.ndim == 4 and len(labels) == len(images)
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self.name = name
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource({self.name}, n={len(self)}, image={self.images.shape[1:]})"
