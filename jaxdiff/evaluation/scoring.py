"""Scoring generated images: FID/KID against reference statistics, or the offline digits metric; the
reference statistics of a jaxdiff data source; NFE-vs-FID sweep tables and plots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdiff.data import make_source
from jaxdiff.errors import UserError
from jaxdiff.evaluation.digits import digits_metric
from jaxdiff.evaluation.features import DEFAULT_BATCH_SIZE, inception_extractor
from jaxdiff.evaluation.metrics import frechet_distance, kid
from jaxdiff.evaluation.statistics import (
    FeatureStatistics,
    load_statistics,
    save_statistics,
    warn_if_singular,
)

try:  # the sweep's plot is optional: matplotlib is in the "test" / "notebooks" extras
    # A bare Figure (no pyplot, no matplotlib.use): importing this module leaves the caller's backend
    # alone, e.g. a notebook's inline one.
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

__all__ = [
    "METRICS",
    "check_finite",
    "load_statistics",
    "reference_statistics",
    "score_images",
    "write_sweep",
]

METRICS = ("inception", "digits")
INCEPTION_DIM = 2048


def check_finite(images: np.ndarray) -> None:
    """``UserError`` when generated images hold NaN or inf (a diverged model or sampler)."""
    bad = ~np.isfinite(np.asarray(images)).reshape(len(images), -1).all(axis=1)
    if bad.any():
        raise UserError(
            f"{int(bad.sum())} of {len(images)} images contain NaN or inf (diverged model or sampler); "
            "nothing to score"
        )


def reference_statistics(
    source: str,
    out_path: str,
    *,
    image_size: int,
    channels: int = 3,
    max_images: int | None = None,
    weights_path: str | None = None,
    allow_download: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    data_dir: str | None = None,
    keep_features: bool = True,
) -> str:
    """Inception statistics of a jaxdiff data source (``digits``, ``folder:``, ``tfds:``, ``hf:``) at
    ``image_size``, written to ``out_path`` (``.npz``: ``mu``, ``sigma``, ``num_samples`` and, with
    ``keep_features``, the float32 ``features`` for KID)."""
    data_source = make_source(
        {"source": source, "image_size": image_size, "channels": channels, "data_dir": data_dir}
    )
    count = len(data_source) if max_images is None else min(max_images, len(data_source))
    if count < 2:
        raise UserError(f"data source {source!r} has {len(data_source)} images; statistics need at least 2")
    extractor = inception_extractor(weights_path, allow_download=allow_download)
    stats, kept = FeatureStatistics(INCEPTION_DIM), []
    for start in range(0, count, batch_size):
        batch = np.stack([data_source[i]["image"] for i in range(start, min(start + batch_size, count))])
        for out in extractor.batches(batch, batch_size):
            stats.update(out["pool3"])
            if keep_features:
                kept.append(out["pool3"])
    warn_if_singular(stats.count, INCEPTION_DIM, "reference images")
    path = save_statistics(out_path, stats.mu, stats.sigma, count=stats.count)
    if keep_features:
        np.savez(path, mu=stats.mu, sigma=stats.sigma, num_samples=stats.count, features=np.concatenate(kept))
    return path


def score_images(
    images_u8: np.ndarray,
    metric: str,
    *,
    ref_stats: str | None = None,
    weights_path: str | None = None,
    allow_download: bool = False,
    kid_subsets: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Scores of uint8 ``[N, H, W, C]`` images: ``{"fid", "kid_mean", "kid_std", ...}`` for
    ``metric="inception"`` against ``ref_stats`` (KID when the file keeps ``features``), or
    ``{"digits_fd", "digits_floor", "digits_kid_mean", ...}`` for ``metric="digits"``."""
    if metric not in METRICS:
        raise UserError(f"metric {metric!r} is not allowed; use one of {', '.join(METRICS)}")
    if metric == "digits":
        scorer = digits_metric()
        kid_mean, kid_std = scorer.kid(images_u8, subsets=kid_subsets)
        histogram = scorer.class_histogram(images_u8)
        return {
            "num_samples": len(images_u8),
            "digits_fd": scorer.fd(images_u8),
            "digits_floor": scorer.floor,
            "digits_floor_std": scorer.floor_std,
            "digits_kid_mean": kid_mean,
            "digits_kid_std": kid_std,
            "digits_class_histogram": [round(float(h), 4) for h in histogram],
        }
    if ref_stats is None:
        raise UserError("metric 'inception' needs reference statistics (--ref_stats FILE.npz)")
    ref_mu, ref_sigma = load_statistics(ref_stats, dim=INCEPTION_DIM)
    extractor = inception_extractor(weights_path, allow_download=allow_download)
    features = extractor(images_u8, batch_size)["pool3"]
    warn_if_singular(len(features), INCEPTION_DIM, "samples")
    stats = FeatureStatistics(INCEPTION_DIM).update(features)
    result: dict[str, Any] = {
        "num_samples": len(features),
        "fid": frechet_distance(stats.mu, stats.sigma, ref_mu, ref_sigma),
    }
    with np.load(ref_stats) as data:
        ref_features = data["features"] if "features" in data.files else None
    if ref_features is not None:
        size = min(len(features), len(ref_features), 1000)
        result["kid_mean"], result["kid_std"] = kid(
            features, ref_features, subsets=kid_subsets, subset_size=size
        )
    return result


def write_sweep(rows: Sequence[dict[str, Any]], out_dir: str, score_key: str, title: str) -> list[str]:
    """The NFE-vs-score table (``sweep.md``, ``sweep.json``) and, with matplotlib, ``sweep.png``."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "sweep.json"), os.path.join(out_dir, "sweep.md")
    with open(json_path, "w") as f:
        json.dump(list(rows), f, indent=2)
    columns = ["sampler", "steps", "nfe", score_key] + [
        k for k in ("kid_mean", "digits_kid_mean") if k in rows[0]
    ]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    written = [md_path, json_path]
    if Figure is not None:
        figure = Figure(figsize=(5, 3.5))
        axes = figure.subplots()
        for sampler in dict.fromkeys(row["sampler"] for row in rows):
            points = sorted((row["nfe"], row[score_key]) for row in rows if row["sampler"] == sampler)
            axes.plot(*zip(*points, strict=True), marker="o", label=sampler)
        if "digits_floor" in rows[0]:
            axes.axhline(rows[0]["digits_floor"], color="gray", linestyle="--", label="real-vs-real floor")
        axes.set_xscale("log")
        axes.set_xlabel("network evaluations (NFE)")
        axes.set_ylabel(score_key)
        axes.set_title(title)
        axes.legend()
        figure.tight_layout()
        png_path = os.path.join(out_dir, "sweep.png")
        figure.savefig(png_path, dpi=100)
        written.append(png_path)
    return written
