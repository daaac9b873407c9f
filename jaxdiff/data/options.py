"""The `data` config section: its keys, their defaults, and validation into a frozen `DataOptions`.

Keys (every one optional; the default is used when a key is absent):

- ``source`` (str, ``"digits"``): where images come from: ``digits[:train|test|all]``, ``tfds:NAME[:split]``,
  ``folder:PATH`` or ``hf:NAME[:split]`` (see ``jaxdiff.data.sources``).
- ``image_size`` (int > 0, 16): images are square ``image_size x image_size``.
- ``channels`` (1 or 3, 1): grayscale or RGB; sources are converted to it.
- ``random_flip`` (bool, False): training batches flip each example horizontally with
  probability 1/2, decided by (seed, the example's position in the global stream).
- ``center_crop`` (bool, True): non-square images are resized so the shorter side is
  ``image_size`` and the centre square is kept; when False they are resized (squashed) directly.
- ``data_dir`` (str or None, None): TFDS ``data_dir`` (local path or ``gs://``; None is TFDS'
  default ``~/tensorflow_datasets``); for ``hf:`` the ``datasets`` cache folder.
- ``image_key`` (str, ``"image"``): the image feature / column of ``tfds:`` and ``hf:`` records.
- ``label_key`` (str, ``"label"``): the integer label feature / column; label 0 when absent.
- ``num_classes`` (int >= 1 or None, None): the number of real classes K of a class-conditional run;
  None is unconditional. When set, every label from the data must lie in ``0..K-1`` (a ``UserError``
  names the first one outside), a ``folder:`` source must hold exactly K class sub-directories, and the
  run config gives the model K + 1 class embeddings (id K is the null label of classifier-free guidance,
  see ``jaxdiff.run_config``). Labels: ``digits`` 0..9; ``tfds:`` / ``hf:`` the ``label_key`` feature;
  ``folder:`` the sorted sub-directory names, like torchvision's ``ImageFolder``.
- ``download`` (bool, False): ``tfds:`` only, let TFDS download and prepare a catalog dataset
  missing from ``data_dir`` (needs network, and TensorFlow for most image datasets).
- ``num_threads`` (int >= 0, 2): threads decoding batches ahead of the training loop (0 = decode
  in the calling thread). They never change the order or content of the batches.
- ``prefetch_buffer_size`` (int >= 0, 4): how many batches those threads prepare ahead.
- ``num_workers`` (int >= 0, 0): grain worker processes (``mp_prefetch``); 0 keeps everything in
  the training process, the simple and deterministic default for CPUs and small images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxdiff.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """A validated `data` config section (see the module docstring for each key)."""

    source: str = "digits"
    image_size: int = 16
    channels: int = 1
    random_flip: bool = False
    center_crop: bool = True
    data_dir: str | None = None
    image_key: str = "image"
    label_key: str = "label"
    num_classes: int | None = None
    download: bool = False
    num_threads: int = 2
    prefetch_buffer_size: int = 4
    num_workers: int = 0


DEFAULTS: dict[str, Any] = dataclasses.asdict(DataOptions())
"""Every `data` key with its default value (for configs/default.py)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def parse_data_config(data_config: Any) -> DataOptions:
    """Validates a `data` config section (dict, ConfigDict or `DataOptions`) into `DataOptions`.

    Raises:
      UserError: an unknown key or a value of the wrong type or out of range.
    """
    if isinstance(data_config, DataOptions):
        return data_config
    if hasattr(data_config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        data_config = data_config.to_dict()
    if not isinstance(data_config, Mapping):
        raise UserError(f"data config must be a mapping of data keys, got {type(data_config).__name__}")
    unknown = sorted(set(data_config) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown data config key {unknown[0]!r}; allowed: {', '.join(DEFAULTS)}")
    values = {**DEFAULTS, **data_config}

    for key in ("source", "image_key", "label_key"):
        if not isinstance(values[key], str) or not values[key]:
            raise UserError(f"data.{key}={values[key]!r} must be a non-empty string")
    for key in ("random_flip", "center_crop", "download"):
        if not _is_bool(values[key]):
            raise UserError(f"data.{key}={values[key]!r} must be a bool (True or False)")
        values[key] = bool(values[key])
    if not _is_int(values["image_size"]) or values["image_size"] <= 0:
        raise UserError(f"data.image_size={values['image_size']!r} must be a positive integer")
    if not _is_int(values["channels"]) or values["channels"] not in (1, 3):
        raise UserError(f"data.channels={values['channels']!r} is not allowed; use 1 (grayscale) or 3 (RGB)")
    for key in ("num_threads", "prefetch_buffer_size", "num_workers"):
        if not _is_int(values[key]) or values[key] < 0:
            raise UserError(f"data.{key}={values[key]!r} must be an integer >= 0")
        values[key] = int(values[key])
    if values["num_classes"] is not None:
        if not _is_int(values["num_classes"]) or values["num_classes"] < 1:
            raise UserError(
                f"data.num_classes={values['num_classes']!r} is not allowed; use a positive integer "
                "(the number of classes) or None (unconditional)"
            )
        values["num_classes"] = int(values["num_classes"])
    if values["data_dir"] is not None:
        if not isinstance(values["data_dir"], (str, os.PathLike)):
            raise UserError(f"data.data_dir={values['data_dir']!r} must be a path string or None")
        values["data_dir"] = os.fspath(values["data_dir"]) or None
    values["image_size"] = int(values["image_size"])
    values["channels"] = int(values["channels"])
    return DataOptions(**values)
