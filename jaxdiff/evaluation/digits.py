"""The offline digits metric: Fréchet distance in the feature space of a small digit classifier.

The bundled digits need no download, but the FID Inception needs its weights; this metric needs neither.
jaxdiff's digits source at 16x16x1 is split (stratified, ``holdout`` images held out, ``seed``); an MLP
(scikit-learn ``MLPClassifier``, hidden layers 256 and 128, ReLU) is trained on the training part; the
features are its last hidden layer (128-d). Samples are scored against the held-out digits' statistics,
in sets of as many images as are held out (400): the FD of one set, or the mean over the disjoint sets of
a larger sample, which is less noisy. The *floor* is the mean FD of ``FLOOR_DRAWS`` random sets of as many
real training digits to the held-out ones: what a perfect generator scores on average. One set's FD is
noisy: real sets of 400 score from about 0.6x to 1.6x that mean (``floor_std`` is their spread), so compare
models over several sets (``benchmarks/quality.py`` reports the same numbers).

The classifier's weights are cached on disk (``cache_dir()``), so it is trained once per split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from jaxdiff.data import make_source
from jaxdiff.data.digits import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, digits_split_indices
from jaxdiff.errors import UserError
from jaxdiff.evaluation.metrics import kid
from jaxdiff.evaluation.weights import cache_dir

__all__ = [
    "DIGITS_SHAPE",
    "DigitsMetric",
    "digits_fd",
    "digits_metric",
    "load_digits_split",
    "symmetric_frechet",
]

DIGITS_SHAPE = (16, 16, 1)
_CLASSIFIER = {"hidden_layer_sizes": (256, 128), "alpha": 1e-3, "max_iter": 400}
FLOOR_DRAWS = 50


def load_digits_split(
    holdout: int = DIGITS_TEST_SIZE, seed: int = DIGITS_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, heldout_images, heldout_labels)``: uint8 ``[N, 16, 16, 1]`` and int
    labels, stratified by class. The defaults are the data source's splits: ``digits:train`` and
    ``digits:test``, so a model trained on ``digits`` is scored on digits it never saw."""
    source = make_source({"source": "digits:all", "image_size": 16, "channels": 1})
    train, heldout = digits_split_indices(holdout, seed)
    return source.images[train], source.labels[train], source.images[heldout], source.labels[heldout]


def symmetric_frechet(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance of two feature sets ``[N, D]`` with ``Tr((S1 S2)^1/2)`` taken as the sum of the
    square roots of the eigenvalues of the symmetric ``S1^1/2 S2 S1^1/2``: exact when a covariance is
    singular, as here (ReLU units that never fire give zero-variance features)."""
    mu1, mu2 = features1.mean(0), features2.mean(0)
    s1, s2 = np.cov(features1, rowvar=False), np.cov(features2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(middle, 0, None)).sum()
    )


def _flat(images_u8: np.ndarray) -> np.ndarray:
    images_u8 = np.asarray(images_u8)
    if images_u8.ndim == 3:
        images_u8 = images_u8[..., None]
    if images_u8.shape[1:] != DIGITS_SHAPE or images_u8.dtype != np.uint8:
        raise UserError(
            f"the digits metric takes uint8 images [N, 16, 16, 1] (the digits config), got {images_u8.dtype} "
            f"{images_u8.shape}"
        )
    return images_u8.reshape(len(images_u8), -1).astype(np.float64) / 255.0


def _train_classifier(images: np.ndarray, labels: np.ndarray, seed: int) -> list[np.ndarray]:
    classifier = MLPClassifier(**_CLASSIFIER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(_flat(images), labels)
    return [*classifier.coefs_, *classifier.intercepts_]


class DigitsMetric:
    """The classifier, its features and the held-out reference for one split (see the module docstring)."""

    def __init__(self, holdout: int = 400, seed: int = 0):
        self.holdout, self.seed = holdout, seed
        self.train_images, self.train_labels, self.heldout_images, self.heldout_labels = load_digits_split(
            holdout, seed
        )
        arrays = self._cached_weights()
        layers = len(arrays) // 2
        self.weights, self.biases = arrays[:layers], arrays[layers:]
        self.heldout_features = self.features(self.heldout_images)
        rng = np.random.default_rng(seed)
        train_features, size = self.features(self.train_images), len(self.heldout_images)
        self.floor_draws = np.array(
            [
                symmetric_frechet(
                    train_features[rng.choice(len(train_features), size, replace=False)],
                    self.heldout_features,
                )
                for _ in range(FLOOR_DRAWS)
            ]
        )
        self.floor = float(self.floor_draws.mean())
        self.floor_std = float(self.floor_draws.std())

    def _cached_weights(self) -> list[np.ndarray]:
        key = json.dumps({"holdout": self.holdout, "seed": self.seed, **_CLASSIFIER}, sort_keys=True)
        path = os.path.join(
            cache_dir(), f"digits-classifier-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        )
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as data:
                    return [data[f"arr_{i}"] for i in range(len(data.files))]
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file: train again and overwrite it
        arrays = _train_classifier(self.train_images, self.train_labels, self.seed)
        os.makedirs(cache_dir(), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, *arrays)
        os.replace(tmp, path)
        return arrays

    def _hidden_and_logits(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = _flat(images_u8)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        return h, h @ self.weights[-1] + self.biases[-1]

    def features(self, images_u8: np.ndarray) -> np.ndarray:
        """float64 ``[N, 128]``: the classifier's last hidden layer for uint8 ``[N, 16, 16, 1]`` digits."""
        return self._hidden_and_logits(images_u8)[0]

    def predict(self, images_u8: np.ndarray) -> np.ndarray:
        """int ``[N]``: the predicted digit (0..9)."""
        return np.argmax(self._hidden_and_logits(images_u8)[1], axis=1)

    def accuracy(self, images_u8: np.ndarray, labels: np.ndarray) -> float:
        return float((self.predict(images_u8) == np.asarray(labels)).mean())

    def class_histogram(self, images_u8: np.ndarray) -> np.ndarray:
        """float ``[10]``: the fraction of images classified as each digit."""
        return np.bincount(self.predict(images_u8), minlength=10) / len(images_u8)

    def fd(self, images_u8: np.ndarray) -> float:
        """Fréchet distance of the images' features to the held-out digits': of all images when there are
        fewer than twice as many as are held out, else the mean over their disjoint consecutive sets of
        that size (the size of the floor's draws; a remainder is left out)."""
        features = self.features(images_u8)
        if len(features) < 2:
            raise UserError(f"the digits FD needs at least 2 images, got {len(features)}")
        size = len(self.heldout_features)
        if len(features) < 2 * size:
            return symmetric_frechet(features, self.heldout_features)
        sets = [features[i : i + size] for i in range(0, len(features) - size + 1, size)]
        return float(np.mean([symmetric_frechet(f, self.heldout_features) for f in sets]))

    def kid(self, images_u8: np.ndarray, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
        """KID ``(mean, std)`` against the held-out digits, subsets of min(N, held-out) images."""
        features = self.features(images_u8)
        size = min(len(features), len(self.heldout_features))
        return kid(features, self.heldout_features, subsets=subsets, subset_size=size, seed=seed)


@functools.lru_cache(maxsize=4)
def digits_metric(holdout: int = 400, seed: int = 0) -> DigitsMetric:
    """The digits metric for a split, built once per process (the classifier once per cache dir)."""
    return DigitsMetric(holdout, seed)


def digits_fd(images_u8: np.ndarray, holdout: int = 400, seed: int = 0) -> tuple[float, float]:
    """``(fd, floor)``: the samples' digits FD and the real-vs-real floor (lower is better; the floor is
    what a perfect generator scores on average)."""
    metric = digits_metric(holdout, seed)
    return metric.fd(images_u8), metric.floor
