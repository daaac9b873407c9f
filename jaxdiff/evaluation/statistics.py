"""Feature statistics for FID: mean and covariance accumulated in float64 over batches.

Saved as ``.npz`` with ``mu`` ``[D]`` and ``sigma`` ``[D, D]``, the layout of pytorch-fid's and the
score_sde / EDM reference statistics, so published files load as they are.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from jaxdiff.errors import UserError

__all__ = ["FeatureStatistics", "load_statistics", "save_statistics"]


class FeatureStatistics:
    """Running mean and (unbiased, like ``np.cov``) covariance of feature rows, without keeping them.

    Sums are taken around a shift (the first batch's mean) so that the covariance does not lose digits
    to cancellation when the mean is large next to the spread.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: np.ndarray) -> FeatureStatistics:
        """Add rows ``[B, D]`` (any float dtype; accumulated in float64)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise UserError(f"features must be [N, {self.dim or 'D'}], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise UserError("features contain NaN or inf (were the images finite?)")
        if len(x) == 0:
            return self
        if self._shift is None:
            self.dim = x.shape[1]
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += len(x)
        return self

    @property
    def mu(self) -> np.ndarray:
        """float64 ``[D]``."""
        self._need(1)
        return self._shift + self._sum / self.count

    @property
    def sigma(self) -> np.ndarray:
        """float64 ``[D, D]``, normalised by N - 1 like ``np.cov(features, rowvar=False)``."""
        self._need(2)
        mean = self._sum / self.count
        return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def _need(self, minimum: int) -> None:
        if self.count < minimum:
            raise UserError(f"statistics need at least {minimum} feature rows, got {self.count}")

    def save(self, path: str | os.PathLike) -> str:
        return save_statistics(path, self.mu, self.sigma, count=self.count)


def warn_if_singular(count: int, dim: int, what: str = "features") -> None:
    """FID from fewer samples than feature dimensions uses a singular covariance: say so."""
    if count <= dim:
        warnings.warn(
            f"{count} {what} for a {dim}-dimensional feature space: the covariance is singular and the "
            f"Fréchet distance is biased; use more than {dim} samples (FID papers use 10k-50k)",
            stacklevel=3,
        )


def save_statistics(
    path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, *, count: int | None = None
) -> str:
    """Write ``mu``/``sigma`` (and ``num_samples`` when known) to an ``.npz``; returns the path."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {} if count is None else {"num_samples": np.int64(count)}
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
    return path


def load_statistics(path: str | os.PathLike, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` from an ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid / EDM layout).

    ``dim``: the feature dimension the caller will compare against (``UserError`` if it differs).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"reference statistics {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise UserError(f"{path} has no 'mu' and 'sigma' arrays (has {sorted(data.files)})")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable .npz file ({error})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    if dim is not None and len(mu) != dim:
        raise UserError(
            f"{path} holds {len(mu)}-dimensional statistics, but the features are {dim}-dimensional"
        )
    return mu, sigma
