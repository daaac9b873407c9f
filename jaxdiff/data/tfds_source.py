"""``tfds:NAME[:split]``: a TensorFlow Datasets dataset read through ``tfds.data_source``.

The dataset must be prepared in a random-access format (array_record) under ``data.data_dir``
(local or ``gs://``; None is TFDS' default folder). NAME is a TFDS name (``mnist``,
``name/config``, optionally ``name:1.2.0``); the split defaults to ``train`` and may use TFDS'
slicing (``train[:90%]``). Reading needs no TensorFlow: TFDS decodes images with Pillow. The image
is the ``data.image_key`` feature (an ``Image`` feature, a uint8 ``Tensor``, or encoded image bytes
in a string ``Tensor``); the label is the ``data.label_key`` feature when it is an integer, else 0.

With ``data.download=True`` a catalog dataset missing from ``data_dir`` is downloaded and prepared in
array_record format first (network access, and TensorFlow for most image datasets, needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.data.images import to_uint8_image
from jaxdiff.data.options import DataOptions
from jaxdiff.data.records import first_line, make_record
from jaxdiff.errors import UserError

_ERRORS = (ValueError, NotImplementedError, FileNotFoundError, OSError, ImportError, AssertionError)


def _class_names(builder: Any, label_key: str) -> tuple[str, ...] | None:
    """The names of a ``ClassLabel`` label feature (label i is ``names[i]``), else None."""
    try:
        names = builder.info.features[label_key].names
    except (KeyError, TypeError, AttributeError):
        return None
    return tuple(str(n) for n in names) if names else None


class TfdsSource:
    """One split of a prepared TFDS dataset as a random-access image source."""

    def __init__(self, name: str, split: str, opts: DataOptions):
        import tensorflow_datasets as tfds

        where = f"data_dir {opts.data_dir!r}" if opts.data_dir else "the default TFDS data_dir"
        try:
            # Resolving the builder is local: the catalog's code and dataset_info.json files in data_dir.
            builder = tfds.builder(name, data_dir=opts.data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise UserError(
                f"unknown TFDS dataset {name!r}: neither in the TFDS catalog nor prepared in {where}; "
                "allowed: a name from tfds.list_builders() or a dataset prepared under data.data_dir"
            ) from None
        except _ERRORS as error:
            raise UserError(f"TFDS dataset {name!r} cannot be opened: {first_line(error)}") from None
        builder_kwargs = None
        if not builder.is_prepared():
            if not opts.download:
                raise UserError(
                    f"TFDS dataset {name!r} is not prepared in {where}; prepare it in array_record format "
                    f"(`tfds build {name} --file_format=array_record`, needs TensorFlow) "
                    "or set data.download=True"
                )
            builder_kwargs = {"file_format": "array_record"}  # a random-access format for data_source
        try:
            self._source = tfds.data_source(
                name,
                split=split,
                data_dir=opts.data_dir,
                download=opts.download,
                builder_kwargs=builder_kwargs,
            )
        except ModuleNotFoundError as error:
            raise UserError(
                f"preparing TFDS dataset {name!r} needs {error.name or 'a missing package'} "
                "(pip install tensorflow), or a copy prepared in array_record format under data.data_dir"
            ) from None
        except _ERRORS as error:
            raise UserError(f"TFDS dataset {name!r} split {split!r}: {first_line(error)}") from None
        self.name, self.split = name, split
        self._opts = opts
        if len(self._source) == 0:
            raise UserError(f"TFDS dataset {name!r} split {split!r} is empty")
        first = self._source[0]
        if not isinstance(first, dict) or opts.image_key not in first:
            keys = sorted(first) if isinstance(first, dict) else []
            raise UserError(
                f"TFDS dataset {name!r} has no feature data.image_key={opts.image_key!r}; allowed: {keys}"
            )
        if opts.num_classes is not None and opts.label_key not in first:
            raise UserError(
                f"TFDS dataset {name!r} has no label feature data.label_key={opts.label_key!r} for "
                f"data.num_classes={opts.num_classes}; allowed: {sorted(first)}"
            )
        self.class_names = _class_names(builder, opts.label_key)

    def _record(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        opts = self._opts
        image = to_uint8_image(
            example[opts.image_key],
            image_size=opts.image_size,
            channels=opts.channels,
            center_crop=opts.center_crop,
        )
        return make_record(image, example.get(opts.label_key))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._record(self._source[int(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        # array_record reads a batch of records in parallel: much faster on remote storage.
        return [self._record(example) for example in self._source.__getitems__([int(i) for i in indices])]

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"
