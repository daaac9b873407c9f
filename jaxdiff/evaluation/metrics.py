"""FID (Fréchet distance), KID and Inception Score, computed as the reference implementations do.

- ``frechet_distance``: pytorch-fid's formula, ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))``
  with ``scipy.linalg.sqrtm`` and, when that is not finite, the same with ``1e-6 I`` added to both
  covariances; a negligible imaginary part is dropped.
- ``kid``: torch-fidelity's unbiased MMD^2 with the cubic polynomial kernel ``(x.y / D + 1)^3`` averaged
  over random subsets (``np.random.RandomState(seed)``, the same draws in the same order).
- ``inception_score``: torch-fidelity's splits (shuffled with ``RandomState(seed)``), float64 softmax.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.special

from jaxdiff.errors import UserError

__all__ = ["frechet_distance", "inception_score", "kid", "polynomial_mmd2"]


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """The Fréchet distance between Gaussians ``(mu1 [D], sigma1 [D, D])`` and ``(mu2, sigma2)``."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape:
        raise UserError(f"the two means have different dimensions: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(
            f"covariances {sigma1.shape} and {sigma2.shape} do not match the means' dimension {len(mu1)}"
        )
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise UserError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"the product of the covariances is singular: taking the square root with {eps} added to "
            "their diagonals (as pytorch-fid does)",
            stacklevel=2,
        )
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise UserError(
                f"the covariances' square root has an imaginary part of {largest:.3g}: too few samples "
                "for the feature dimension, or degenerate features"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def polynomial_mmd2(features1: np.ndarray, features2: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets ``[m, D]`` under the kernel ``(x.y / D + 1)^3``, in float64."""
    features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m, dim = features1.shape
    k_11 = (features1 @ features1.T * (1.0 / dim) + 1) ** 3
    k_22 = (features2 @ features2.T * (1.0 / dim) + 1) ** 3
    k_12 = (features1 @ features2.T * (1.0 / dim) + 1) ** 3
    off_diagonal_11 = (k_11.sum(axis=1) - np.diagonal(k_11)).sum()
    off_diagonal_22 = (k_22.sum(axis=1) - np.diagonal(k_22)).sum()
    return float((off_diagonal_11 + off_diagonal_22) / (m * (m - 1)) - 2 * k_12.sum(axis=0).sum() / (m * m))


def kid(
    features1: np.ndarray, features2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance ``(mean, std)`` over ``subsets`` random subsets of ``subset_size`` rows
    (drawn without replacement from each ``[N, D]`` set, alternately, with ``RandomState(seed)``).

    Kernels are computed in float64: with float32 features torch-fidelity keeps float32 and differs in the
    fifth digit; with float64 features the two agree to rounding."""
    features1, features2 = np.asarray(features1), np.asarray(features2)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise UserError(
            f"KID needs two [N, D] feature sets of one D, got {features1.shape} and {features2.shape}"
        )
    if min(len(features1), len(features2)) < subset_size:
        raise UserError(
            f"KID subset_size {subset_size} is larger than the feature sets ({len(features1)} and "
            f"{len(features2)} rows): pass a subset_size of at most {min(len(features1), len(features2))}"
        )
    if subset_size < 2 or subsets < 1:
        raise UserError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        subset1 = features1[rng.choice(len(features1), subset_size, replace=False)]
        subset2 = features2[rng.choice(len(features2), subset_size, replace=False)]
        mmds[i] = polynomial_mmd2(subset1, subset2)
    return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(
    logits: np.ndarray, splits: int = 10, shuffle: bool = True, seed: int = 2020
) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` parts of the logits ``[N, classes]``."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise UserError(f"IS needs logits [N, classes] with N >= splits ({splits}), got shape {logits.shape}")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(len(logits))]
    log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    p = np.exp(log_p)
    n = len(logits)
    scores = []
    for i in range(splits):
        part, log_part = (
            p[i * n // splits : (i + 1) * n // splits],
            log_p[i * n // splits : (i + 1) * n // splits],
        )
        q = part.mean(axis=0, keepdims=True)
        scores.append(float(np.exp((part * (log_part - np.log(q))).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))
