"""``digits``: scikit-learn's bundled handwritten digits, the offline default dataset.

1,797 grayscale 8x8 images with integer values 0..16 and labels 0..9 (scikit-learn ships them, so no
download). Values are rescaled to 0..255 and upsampled with Pillow's bicubic filter to
``image_size`` (16 in the digits config); ``channels=3`` replicates the gray channel.

Splits (``data.source = "digits[:split]"``): ``train`` (the default, 1,397 digits), ``test`` (the other
400, stratified by class: the held-out digits the digits metric, ``jaxdiff.evaluation.digits``, scores
samples against) and ``all`` (1,797). Training on ``train`` keeps that score held out.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxdiff.data.images import to_uint8_image
from jaxdiff.data.options import DataOptions
from jaxdiff.data.records import ArraySource
from jaxdiff.errors import UserError

DIGITS_CLASS_NAMES = tuple(str(d) for d in range(10))  # label d is the digit d
DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TEST_SIZE = 400  # the held-out split: 40 digits a class
DIGITS_SPLIT_SEED = 0


@functools.cache
def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The raw digits as uint8 ``[1797, 8, 8]`` in 0..255 and int32 labels ``[1797]``."""
    # scikit-learn is imported on first use: importing it costs about a second, which every importer of
    # jaxdiff.data (sample.py and all inference) would pay for data it never reads.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int32)


def digits_split_indices(
    test_size: int = DIGITS_TEST_SIZE, seed: int = DIGITS_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``train`` and ``test`` splits into the 1,797 digits: int ``[1797 - test_size]``,
    ``[test_size]``, stratified by class (scikit-learn's ``train_test_split``, ``random_state=seed``)."""
    from sklearn.model_selection import train_test_split  # on first use, as in _digits_uint8

    labels = _digits_uint8()[1]
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return train, test


@functools.lru_cache(maxsize=8)
def _digits_source(image_size: int, channels: int, split: str) -> ArraySource:
    raw, labels = _digits_uint8()
    if split != "all":
        index = digits_split_indices()[DIGITS_SPLITS.index(split)]
        raw, labels = raw[index], labels[index]
    images = np.stack([to_uint8_image(x, image_size=image_size, channels=1) for x in raw])
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    images.flags.writeable = False  # shared between callers through the cache
    return ArraySource(images, labels, name=f"digits:{split}", class_names=DIGITS_CLASS_NAMES)


def digits_source(opts: DataOptions, split: str = "train") -> ArraySource:
    """The digits of ``split`` (one of ``DIGITS_SPLITS``) in memory at ``opts.image_size`` /
    ``opts.channels``: uint8 ``[N, S, S, C]`` (N = 1,397 / 400 / 1,797) and int32 labels ``[N]``.

    Raises:
      UserError: an unknown split.
    """
    if split not in DIGITS_SPLITS:
        raise UserError(
            f"data.source={opts.source!r}: unknown digits split {split!r}; "
            f"allowed: {', '.join(DIGITS_SPLITS)}"
        )
    return _digits_source(opts.image_size, opts.channels, split)
