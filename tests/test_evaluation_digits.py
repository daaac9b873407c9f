"""The offline digits metric: the split and classifier of benchmarks/quality.py, its floor, its cache."""

import os

import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.evaluation.digits import DigitsMetric, digits_fd


def test_digits_metric_floor_accuracy_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path))
    metric = DigitsMetric(holdout=400, seed=0)
    # The numbers benchmarks/RESULTS.md reports for this split and classifier.
    assert metric.accuracy(metric.heldout_images, metric.heldout_labels) == pytest.approx(0.983, abs=0.005)
    # The floor is the mean FD of 50 random sets of 400 training digits; one set is far from it.
    assert metric.floor == pytest.approx(2.88, abs=0.05) and metric.floor_std == pytest.approx(0.6, abs=0.05)
    assert metric.floor == pytest.approx(metric.floor_draws.mean()) and len(metric.floor_draws) == 50
    assert metric.features(metric.heldout_images[:3]).shape == (3, 128)
    histogram = metric.class_histogram(metric.heldout_images)
    assert histogram.shape == (10,) and histogram.sum() == pytest.approx(1) and histogram.min() > 0.08
    assert [f for f in os.listdir(tmp_path) if f.startswith("digits-classifier-")]
    again = DigitsMetric(holdout=400, seed=0)  # from the cache: the same classifier
    np.testing.assert_array_equal(again.heldout_features, metric.heldout_features)
    # Noise is far from digits; real held-out digits are at distance 0 from themselves.
    noise = np.random.default_rng(0).integers(0, 256, (100, 16, 16, 1), dtype=np.uint8)
    assert metric.fd(noise) > 10 * metric.floor
    assert metric.fd(metric.heldout_images) == pytest.approx(0, abs=1e-6)
    fd, floor = digits_fd(metric.train_images[:400])
    assert floor == metric.floor and 0 < fd < 2 * floor
    # 800 images or more: the mean over their sets of 400 (a remainder left out); fewer: one FD of all.
    sets = [metric.fd(metric.train_images[i * 400 : (i + 1) * 400]) for i in range(3)]
    assert metric.fd(metric.train_images[:1250]) == pytest.approx(np.mean(sets), rel=1e-12)
    assert metric.fd(metric.train_images[:800]) == pytest.approx(np.mean(sets[:2]), rel=1e-12)
    assert metric.fd(metric.train_images[:799]) != pytest.approx(sets[0], rel=1e-6)  # one set of 799
    with pytest.raises(UserError, match=r"uint8 images \[N, 16, 16, 1\]"):
        metric.fd(np.zeros((4, 32, 32, 3), np.uint8))
