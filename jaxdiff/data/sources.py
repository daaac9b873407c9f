"""Random-access image sources (grain ``RandomAccessDataSource``: ``len`` + ``__getitem__``).

Every source yields records ``{"image": uint8 [S, S, C], "label": int32 scalar}`` already at the
configured ``image_size`` (S) and ``channels`` (C). Sources whose labels are named classes have a
``class_names`` attribute (label i is ``class_names[i]``; None when unknown). With ``data.num_classes`` set,
labels outside ``0..num_classes-1`` are a ``UserError`` (here for the in-memory sources, per batch in the
pipeline for the others). ``data.source`` picks one:

- ``digits[:split]``: scikit-learn's bundled handwritten digits (8x8): ``train`` (1,397, the default),
  ``test`` (the 400 the digits metric holds out) or ``all`` (1,797), see ``digits.py``.
- ``tfds:NAME[:split]``: a TFDS dataset prepared in array_record format, see ``tfds_source.py``.
- ``folder:PATH``: every image file under PATH, recursively, see ``folder.py``.
- ``hf:NAME[:split]``: a Hugging Face dataset (optional ``datasets`` package), see ``hf.py``.
"""

from __future__ import annotations

from typing import Any

from jaxdiff.data.digits import digits_source
from jaxdiff.data.folder import FolderSource
from jaxdiff.data.hf import HfSource
from jaxdiff.data.options import DataOptions, parse_data_config
from jaxdiff.data.records import ArraySource, ImageSource, check_labels, first_line, make_record
from jaxdiff.data.tfds_source import TfdsSource
from jaxdiff.errors import UserError

__all__ = [
    "ArraySource",
    "ImageSource",
    "SCHEMES",
    "check_labels",
    "first_line",
    "make_record",
    "make_source",
    "split_name",
]

SCHEMES = ("digits[:train|test|all]", "tfds:NAME[:split]", "folder:PATH", "hf:NAME[:split]")


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
    if scheme == "digits":
        source = digits_source(opts, rest if sep else "train")
    elif scheme == "folder" and sep:
        source = FolderSource(rest, opts)
    elif scheme == "tfds" and sep:
        source = TfdsSource(*split_name(rest, opts.source), opts)
    elif scheme == "hf" and sep:
        source = HfSource(*split_name(rest, opts.source), opts)
    else:
        raise UserError(f"unknown data.source {opts.source!r}; allowed: {', '.join(SCHEMES)}")
    labels = getattr(source, "labels", None)  # in memory: checked whole here, the others per batch
    if labels is not None:
        check_labels(labels, opts.num_classes, f"data.source={opts.source!r}")
    return source
