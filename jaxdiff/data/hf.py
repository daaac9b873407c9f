"""``hf:NAME[:split]``: a Hugging Face dataset, with the optional ``datasets`` package.

NAME is a Hub dataset id (``huggan/smithsonian_butterflies_subset``, downloaded into
``data.data_dir`` when given, else the ``datasets`` cache), a local folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a local dataset folder ``load_dataset``
understands (e.g. an ``imagefolder`` or parquet files). The split defaults to ``train``. Images come
from the ``data.image_key`` column (default ``image``; a decoded PIL image, encoded bytes or an
array), labels from ``data.label_key`` when it is an integer column, else 0.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxdiff.data.images import to_uint8_image
from jaxdiff.data.options import DataOptions
from jaxdiff.data.records import first_line, make_record
from jaxdiff.errors import UserError


def _load(name: str, split: str, data_dir: str | None) -> Any:
    import datasets

    path = os.path.expanduser(name)
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_dict.json"))
        or os.path.exists(os.path.join(path, "dataset_info.json"))
        and os.path.exists(os.path.join(path, "state.json"))
    ):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(
                    f"Hugging Face dataset {name!r} has no split {split!r}; allowed: {list(loaded)}"
                )
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset(path if os.path.isdir(path) else name, split=split, cache_dir=data_dir)


class HfSource:
    """One split of a Hugging Face ``datasets.Dataset`` as a random-access image source."""

    def __init__(self, name: str, split: str, opts: DataOptions):
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise UserError(
                f"data.source 'hf:{name}' needs the optional `datasets` package: pip install datasets"
            ) from None
        try:
            self._dataset = _load(name, split, opts.data_dir)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - datasets raises many types; report them as one line
            raise UserError(f"Hugging Face dataset {name!r} split {split!r}: {first_line(error)}") from None
        columns = list(self._dataset.column_names)
        if opts.image_key not in columns:
            raise UserError(
                f"Hugging Face dataset {name!r} has no column data.image_key={opts.image_key!r}; "
                f"allowed: {columns}"
            )
        if len(self._dataset) == 0:
            raise UserError(f"Hugging Face dataset {name!r} split {split!r} is empty")
        self._label_key = opts.label_key if opts.label_key in columns else None
        if opts.num_classes is not None and self._label_key is None:
            raise UserError(
                f"Hugging Face dataset {name!r} has no label column data.label_key={opts.label_key!r} for "
                f"data.num_classes={opts.num_classes}; allowed: {columns}"
            )
        features = getattr(self._dataset, "features", None) or {}
        names = getattr(features.get(self._label_key), "names", None) if self._label_key else None
        self.class_names = tuple(names) if names else None  # a ClassLabel column's names
        self._dataset = self._dataset.select_columns(
            [opts.image_key] + ([self._label_key] * bool(self._label_key))
        )
        self.name, self.split = name, split
        self._opts = opts

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        opts = self._opts
        example = self._dataset[int(index)]
        image = to_uint8_image(
            example[opts.image_key],
            image_size=opts.image_size,
            channels=opts.channels,
            center_crop=opts.center_crop,
        )
        return make_record(image, example[self._label_key] if self._label_key else None)

    def __repr__(self) -> str:
        return f"HfSource({self.name!r}, split={self.split!r}, n={len(self)})"
