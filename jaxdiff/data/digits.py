"""``digits``: scikit-learn's bundled handwritten digits, the offline default dataset.

1,797 grayscale 8x8 images with integer values 0..16 and labels 0..9 (scikit-learn ships them, so no
download). Values are rescaled to 0..255 and upsampled with Pillow's bicubic filter to
``image_size`` (16 in the digits config); ``channels=3`` replicates the gray channel.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxdiff.data.images import to_uint8_image
from jaxdiff.data.options import DataOptions
from jaxdiff.data.records import ArraySource

DIGITS_CLASS_NAMES = tuple(str(d) for d in range(10))  # label d is the digit d


@functools.cache
def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The raw digits as uint8 ``[1797, 8, 8]`` in 0..255 and int32 labels ``[1797]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _digits_source(image_size: int, channels: int) -> ArraySource:
    raw, labels = _digits_uint8()
    images = np.stack([to_uint8_image(x, image_size=image_size, channels=1) for x in raw])
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    images.flags.writeable = False  # shared between callers through the cache
    return ArraySource(images, labels, name="digits", class_names=DIGITS_CLASS_NAMES)


def digits_source(opts: DataOptions) -> ArraySource:
    """All digits in memory at ``opts.image_size`` / ``opts.channels``: uint8 ``[1797, S, S, C]``."""
    return _digits_source(opts.image_size, opts.channels)
