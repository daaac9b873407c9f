"""The FID Inception over 8 simulated devices gives the same features and statistics as over 1."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff.evaluation import weights as weights_lib  # noqa: E402
from tests import _evaluation_peer as peer  # noqa: E402

_SCRIPT = """
import sys
import numpy as np
import jax
from jaxdiff.evaluation import FeatureStatistics, inception_extractor
images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
extractor = inception_extractor(sys.argv[1])
assert extractor.num_devices == len(jax.devices()) == int(sys.argv[3]), (extractor.num_devices, jax.devices())
stats = FeatureStatistics()
parts = []
for out in extractor.batches(images, batch_size=8):
    stats.update(out["pool3"])
    parts.append(out["pool3"])
np.savez(sys.argv[2], features=np.concatenate(parts), mu=stats.mu, sigma=stats.sigma)
"""


def _run(weights: str, out: str, devices: int) -> dict[str, np.ndarray]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, weights, out, str(devices)], check=True, env=env, timeout=600
    )
    with np.load(out) as data:
        return dict(data)


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))
    weights = str(tmp_path / "w.pth")
    peer.torch.save(peer.random_inception_state_dict(weights_lib._expected_shapes(), seed=1), weights)
    one = _run(weights, str(tmp_path / "one.npz"), 1)
    eight = _run(weights, str(tmp_path / "eight.npz"), 8)
    assert one["features"].shape == (10, 2048)
    scale = np.abs(one["features"]).max()
    assert scale > 0.1 and one["features"].std(axis=0).mean() > 1e-3 * scale  # features that vary
    np.testing.assert_allclose(eight["features"], one["features"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(eight["mu"], one["mu"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(eight["sigma"], one["sigma"], rtol=0, atol=1e-5 * np.abs(one["sigma"]).max())
