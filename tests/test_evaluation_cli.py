"""evaluate.py as a user runs it: the digits metric of a tiny run, a step sweep, and bad input."""

import json

import numpy as np
import pytest

from jaxdiff.evaluation import save_statistics
from tests.test_cli import env, run, trained  # noqa: F401  (fixtures: a tiny 16x16 digits run through train.py)


@pytest.fixture(scope="module")
def eval_env(env, tmp_path_factory):  # noqa: F811
    return {**env, "JAXDIFF_CACHE": str(tmp_path_factory.mktemp("jaxdiff_cache"))}


@pytest.mark.slow
def test_digits_metric_and_step_sweep(trained, eval_env, tmp_path):  # noqa: F811
    workdir, _ = trained
    out = tmp_path / "eval"
    args = ["--workdir", str(workdir), "--steps", "2,3", "--num_samples", "8", "--batch_size", "8"]
    result = run(["evaluate.py", *args, "--kid_subsets", "3", "--out", str(out)], eval_env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "sweep.json").read_text())
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("ddim", 2, 2), ("ddim", 3, 3)]
    for row in rows:
        assert row["metric"] == "digits" and row["num_samples"] == 8
        assert np.isfinite(row["digits_fd"]) and row["digits_fd"] > row["digits_floor"] > 0
        assert len(row["digits_class_histogram"]) == 10
        assert json.loads((out / f"eval_ddim_{row['steps']}.json").read_text()) == row
    assert "| ddim | 2 | 2 |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "digits_fd" in result.stdout and "real-vs-real floor" in result.stdout
    assert "singular" not in result.stdout  # the digits FD is exact for singular covariances


@pytest.mark.slow
def test_bad_input_is_one_line(trained, eval_env, tmp_path):  # noqa: F811
    workdir, _ = trained
    wrong_dim = save_statistics(tmp_path / "ref64.npz", np.zeros(64), np.eye(64))
    cases = [
        (["--workdir", str(workdir), "--metric", "inception"], "needs --ref_stats"),
        (["--workdir", str(workdir), "--ref_stats", wrong_dim], "64-dimensional statistics"),
        (["--workdir", str(workdir), "--ref_stats", str(tmp_path / "none.npz")], "do not exist"),
        (["--workdir", str(workdir), "--steps", "ten"], "--steps=ten must be integers"),
        (["--workdir", str(workdir), "--sampler", "lms"], "--sampler='lms' is not allowed"),
        (["--workdir", str(tmp_path / "nothing")], "nothing"),
        (["--ref_source", "digits", "--ref_out", str(tmp_path / "r.npz")], "needs --image_size"),
        ([], "give --workdir DIR"),
    ]
    for args, message in cases:
        result = run(["evaluate.py", *args], eval_env)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.startswith("error: ") and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
