"""Random-access image sources (grain ``RandomAccessDataSource``: ``len`` + ``__getitem__``).

Every source yields records ``{"image": uint8 [S, S, C], "label": int32 scalar}`` already at the
configured ``image_size`` (S) and ``channels`` (C). ``data.source`` picks one:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 8x8), see ``digits.py``.
- ``tfds:NAME[:split]``: a TFDS dataset prepared in array_record format, see ``tfds_source.py``.
- ``folder:PATH``: every image file under PATH, recursively, see ``folder.py``.
- ``hf:NAME[:split]``: a Hugging Face dataset (optional ``datasets`` package), see ``hf.py``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from jaxdiff.data.options import DataOptions, parse_data_config
from jaxdiff.errors import UserError

SCHEMES = ("digits", "tfds:NAME[:split]", "folder:PATH", "hf:NAME[:split]")


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


def split_name(rest: str, source: str) -> tuple[str, str]:
    """``NAME[:split]`` -> (NAME, split); the split is everything after the first colon, "train" if none.

    A TFDS version may follow the name (``mnist:3.0.1:train``): a part made of digits, dots and ``*``.
    """
    name, _, split = rest.partition(":")
    head, sep, tail = split.partition(":")
    if (
        sep
        and head
        and all(part.isdigit() or part == "*" for part in head.split("."))
        and head.count(".") == 2
    ):
        name, split = f"{name}:{head}", tail
    if not name:
        raise UserError(f"data.source={source!r} names no dataset; allowed: {', '.join(SCHEMES)}")
    return name, split or "train"


def make_source(data_config: Any) -> ImageSource:
    """The random-access source that ``data_config.source`` names (records described above).

    Raises:
      UserError: unknown scheme, unknown dataset / split, missing or empty folder, no usable images,
        or an invalid data config.
    """
    opts: DataOptions = parse_data_config(data_config)
    scheme, sep, rest = opts.source.partition(":")
    if scheme == "digits" and not sep:
        from jaxdiff.data.digits import digits_source

        return digits_source(opts)
    if scheme == "folder" and sep:
        from jaxdiff.data.folder import FolderSource

        return FolderSource(rest, opts)
    if scheme == "tfds" and sep:
        from jaxdiff.data.tfds_source import TfdsSource

        return TfdsSource(*split_name(rest, opts.source), opts)
    if scheme == "hf" and sep:
        from jaxdiff.data.hf import HfSource

        return HfSource(*split_name(rest, opts.source), opts)
    raise UserError(f"unknown data.source {opts.source!r}; allowed: {', '.join(SCHEMES)}")
