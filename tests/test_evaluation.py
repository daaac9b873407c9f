"""jaxdiff.evaluation against torch-fidelity: the FID Inception's features, FID, KID, IS; weight files."""

import collections
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.evaluation import (
    FeatureStatistics,
    frechet_distance,
    inception_extractor,
    inception_features,
    inception_score,
    kid,
    load_statistics,
    save_statistics,
)
from jaxdiff.evaluation import weights as weights_lib
from jaxdiff.evaluation.statistics import warn_if_singular
from jaxdiff.evaluation.torch_pickle import read_state_dict
from tests import _evaluation_peer as peer  # noqa: E402

torch = peer.torch


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> str:
    """Random FID-Inception weights saved by torch.save in the peer's state-dict format."""
    path = str(tmp_path_factory.mktemp("weights") / "random-inception.pth")
    torch.save(peer.random_inception_state_dict(weights_lib._expected_shapes(), seed=0), path)
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


# -- the network ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(299, 299, 3), (32, 32, 3), (48, 64, 3), (16, 16, 1)])
def test_features_match_torch_fidelity(random_weights, shape):
    images = np.random.default_rng(sum(shape)).integers(0, 256, (3, *shape), dtype=np.uint8)
    rgb = np.repeat(images, 3, axis=-1) if shape[-1] == 1 else images
    with torch.no_grad():
        ref = peer.peer_extractor(random_weights)(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous())
    ours = inception_extractor(random_weights)(images)
    for name, expected in zip(("pool3", "logits_unbiased", "logits"), ref, strict=True):
        expected = expected.numpy()
        assert ours[name].shape == expected.shape and ours[name].dtype == np.float32
        np.testing.assert_allclose(ours[name], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # The public function: same pool3 features; converted once into the cache.
    np.testing.assert_array_equal(inception_features(images, weights_path=random_weights), ours["pool3"])
    assert any(f.endswith(".safetensors") for f in os.listdir(os.environ["JAXDIFF_CACHE"]))


def test_features_do_not_depend_on_the_batch_split(random_weights):
    images = np.random.default_rng(1).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    whole = inception_features(images, random_weights, batch_size=8)
    in_twos = inception_features(images, random_weights, batch_size=2)
    np.testing.assert_allclose(in_twos, whole, rtol=1e-5, atol=1e-5)


# -- metrics against the peer's functions --------------------------------------------------------------------


def _feature_sets(n1=400, n2=300, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = np.maximum(rng.normal(size=(n1, dim)) @ mix + 0.5, 0).astype(np.float32)
    b = np.maximum(rng.normal(size=(n2, dim)) @ (mix * 1.2) + 0.4, 0).astype(np.float32)
    return a, b


def test_statistics_accumulated_in_batches_match_the_peer():
    a, _ = _feature_sets()
    stats = FeatureStatistics()
    for start in range(0, len(a), 64):
        stats.update(a[start : start + 64])
    ref = peer.fidelity.fid.fid_features_to_statistics(torch.from_numpy(a))
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64 and stats.count == len(a)
    np.testing.assert_allclose(stats.mu, ref["mu"], rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, ref["sigma"], rtol=1e-6, atol=1e-9)


def test_frechet_distance_matches_the_peer():
    a, b = _feature_sets()
    sa, sb = FeatureStatistics().update(a), FeatureStatistics().update(b)
    ref = peer.fidelity.fid.fid_statistics_to_metric(
        {"mu": sa.mu, "sigma": sa.sigma}, {"mu": sb.mu, "sigma": sb.sigma}, verbose=False
    )["frechet_inception_distance"]
    ours = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert ours > 0.1
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma) == pytest.approx(0, abs=1e-6)


def test_kid_matches_the_peer():
    a, b = (x.astype(np.float64) for x in _feature_sets())  # the peer computes in the features' dtype
    ref = peer.fidelity.kid.kid_features_to_metric(
        torch.from_numpy(a),
        torch.from_numpy(b),
        kid_subsets=20,
        kid_subset_size=100,
        rng_seed=3,
        verbose=False,
    )
    mean, std = kid(a, b, subsets=20, subset_size=100, seed=3)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)
    assert kid(a, b, subsets=20, subset_size=100, seed=4) != (mean, std)


def test_inception_score_matches_the_peer():
    logits = np.random.default_rng(2).normal(size=(50, 1008)).astype(np.float32) * 3
    ref = peer.fidelity.isc.isc_features_to_metric(
        torch.from_numpy(logits), splits=5, shuffle=True, rng_seed=7
    )
    mean, std = inception_score(logits, splits=5, seed=7)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-6)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-6)


def test_statistics_npz_round_trip_in_the_reference_layout(tmp_path):
    a, _ = _feature_sets()
    stats = FeatureStatistics().update(a)
    path = stats.save(tmp_path / "ref")
    with np.load(path) as data:
        assert {"mu", "sigma"} <= set(data.files)
    mu, sigma = load_statistics(path, dim=a.shape[1])
    np.testing.assert_array_equal(mu, stats.mu)
    np.testing.assert_array_equal(sigma, stats.sigma)


# -- bad input ---------------------------------------------------------------------------------------


def test_reader_refuses_a_pickle_that_calls_anything_and_never_runs_it(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(collections.OrderedDict(weight=Exploit()), protocol=2)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(payload)
    zipped = tmp_path / "zipped.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    for path in (legacy, zipped):
        with pytest.raises(UserError, match=r"not a plain weight file.*(posix|os)\.system"):
            read_state_dict(path)
        with pytest.raises(UserError):
            inception_features(np.zeros((1, 8, 8, 3), np.uint8), weights_path=path)
    assert not marker.exists()


def test_reader_reads_both_torch_save_formats(tmp_path):
    state = collections.OrderedDict(
        a=torch.randn(3, 4),
        b=torch.arange(6),
        c=torch.randn(5, 6).t(),
        d=torch.randn(8)[2:5],
        e=torch.randn(2).half(),
    )
    for legacy in (False, True):
        path = tmp_path / f"sd-{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        read = read_state_dict(path)
        for name, value in state.items():
            np.testing.assert_array_equal(read[name], value.numpy())


def test_missing_partial_and_foreign_weight_files(tmp_path, random_weights):
    images = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="does not exist"):
        inception_features(images, weights_path=tmp_path / "nope.pth")
    partial = tmp_path / "partial.pth"
    data = open(random_weights, "rb").read()
    partial.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="partial.pth"):
        inception_features(images, weights_path=partial)
    foreign = tmp_path / "foreign.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict(), foreign)
    with pytest.raises(UserError, match="not the FID Inception-v3 weight file"):
        inception_features(images, weights_path=foreign)
    # No file anywhere and no permission to download: one line saying where to put it.
    with pytest.raises(
        UserError, match=r"pt_inception-2015-12-05-6726825d\.pth.*" + os.environ["JAXDIFF_CACHE"]
    ):
        inception_features(images)


def test_weights_found_in_torch_hub_folder(tmp_path, random_weights):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.symlink(random_weights, hub / weights_lib.OFFICIAL_FILE_NAMES[1])
    assert weights_lib.resolve_weights().startswith(os.environ["JAXDIFF_CACHE"])


def test_bad_images_statistics_and_sample_counts(tmp_path, random_weights):
    nan_images = np.full((2, 16, 16, 3), np.nan, np.float32)
    with pytest.raises(UserError, match="NaN"):
        inception_features(nan_images, weights_path=random_weights)
    with pytest.raises(UserError, match="NHWC"):
        inception_features(np.zeros((2, 3, 16, 16), np.uint8), weights_path=random_weights)
    path = save_statistics(tmp_path / "ref64.npz", np.zeros(64), np.eye(64))
    with pytest.raises(UserError, match="64-dimensional.*2048"):
        load_statistics(path, dim=2048)
    with pytest.raises(UserError, match="different dimensions"):
        frechet_distance(np.zeros(64), np.eye(64), np.zeros(2048), np.eye(2048))
    a, b = _feature_sets(n1=30, n2=30)
    with pytest.raises(UserError, match="subset_size 1000"):
        kid(a, b)
    with pytest.warns(UserWarning, match="singular"):
        warn_if_singular(30, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_singular(100, 48)
