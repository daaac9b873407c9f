"""Test helper: write a tiny TFDS dataset in array_record format, without TensorFlow.

TFDS needs no TensorFlow to *write* array_record datasets from a ``GeneratorBasedBuilder`` as long as
no feature has to be encoded by TF: ``tfds.features.Tensor`` (uint8 arrays, or ``np.object_`` for
raw bytes), ``ClassLabel``, and ``tfds.features.Image`` when it is given already-encoded PNG bytes
(encoding a numpy array would call ``tf.image.encode_png``). The builder class is created with
``skip_registration=True``, so readers find the dataset from its files (``dataset_info.json``,
``features.json``) in ``data_dir``, exactly as ``train.py`` in another process would.

Example value of image ``i``: every pixel is ``10 * i`` (so tests can tell which example they got),
label ``i % 3``.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

KINDS = ("tensor", "image", "bytes")


def example_pixels(i: int, size: int, channels: int) -> np.ndarray:
    """The uint8 ``[size, size, channels]`` image of example ``i``."""
    return np.full((size, size, channels), (10 * i) % 256, np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def build_tiny_tfds(
    data_dir: str, name: str, *, n: int = 10, size: int = 8, channels: int = 1, kind="tensor"
):
    """Writes dataset ``name`` (splits ``train`` with n examples, ``test`` with 2) under ``data_dir``.

    ``kind``: "tensor" (uint8 ``Tensor`` image), "image" (``tfds.features.Image`` from PNG bytes) or
    "bytes" (PNG bytes in a string ``Tensor``, decoded by jaxdiff). Returns ``name``.
    """
    assert kind in KINDS
    shape = (size, size, channels)
    image_feature = {
        "tensor": tfds.features.Tensor(shape=shape, dtype=np.uint8),
        "image": tfds.features.Image(shape=shape),
        "bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
    }[kind]

    def info(self):
        features = {"image": image_feature, "label": tfds.features.ClassLabel(num_classes=3)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(range(n)), "test": self._generate_examples(range(n, n + 2))}

    def generate_examples(self, indices):
        for i in indices:
            pixels = example_pixels(i, size, channels)
            yield i, {"image": pixels if kind == "tensor" else _png(pixels), "label": i % 3}

    builder_cls = type(
        "TinyBuilder",
        (tfds.core.GeneratorBasedBuilder,),
        {
            "name": name,
            "VERSION": tfds.core.Version("1.0.0"),
            "_info": info,
            "_split_generators": split_generators,
            "_generate_examples": generate_examples,
        },
        skip_registration=True,
    )
    builder_cls(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return name
