"""Smoke runs of the benchmark scripts (tiny sizes): they must run end to end and write what they promise.

No figure is checked: speed and quality are measured by hand (benchmarks/RESULTS.md).
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytest.importorskip("torch")
pytest.importorskip("diffusers")


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_speed_script_runs_every_kind_of_row(tmp_path):
    out = tmp_path / "speed.json"
    rows = "train:2,forward:2,ddim:2,ddpm:2"
    args = ["--rows", rows, "--reps", "1", "--sample_reps", "1", "--warmup", "1"]
    args += ["--train_steps_per_call", "1", "--ddim_steps", "2", "--ddpm_steps", "3", "--json", str(out)]
    table = run_script("speed.py", *args)
    for name in ("train b2", "forward b2", "ddim-2 b2", "ddpm-3 b2"):
        assert f"| {name} |" in table
    assert "speedup jaxdiff/diffusers" in table
    result = json.loads(out.read_text())
    assert [row["name"] for row in result["rows"]] == ["train b2", "forward b2", "ddim-2 b2", "ddpm-3 b2"]
    for row in result["rows"]:
        assert len(row["jax_times"]) == len(row["torch_times"]) == 1
        assert all(t > 0 for t in row["jax_times"] + row["torch_times"])
    assert result["meta"]["versions"]


def test_speed_script_rejects_a_bad_row():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--rows", "train:x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "train:x" in result.stderr and "Traceback" not in result.stderr


def test_quality_script_scores_both_sides(tmp_path):
    out = tmp_path / "quality"
    args = ["--train_steps", "3", "--warmup_steps", "1", "--curve", "ddim:2", "--holdout", "100"]
    args += ["--num_samples", "20", "--sample_chunk", "20", "--out", str(out)]
    run_script("quality.py", *args)
    result = json.loads((out / "results.json").read_text())
    assert set(result["sides"]) == {"jaxdiff", "diffusers"}
    assert result["heldout_size"] == 100
    assert math.isfinite(result["floor_train_vs_heldout"])
    for side, data in result["sides"].items():
        assert math.isfinite(data["scores"]["ddim:2"]["fd"])
        assert (out / f"{side}_ddim_2.png").stat().st_size > 0


def test_gpu_check_script_runs_its_stages_and_writes_its_files(tmp_path):
    # On this CPU-only machine the script runs every stage as it would on a GPU machine, on the CPU.
    out = tmp_path / "gpu_check"
    args = ["--rows", "forward:2", "--reps", "1", "--warmup", "1"]
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), *args],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    versions = (out / "versions.txt").read_text()
    assert "diffusers 0.42.1" in versions and "jax backend: cpu" in versions
    assert "1 passed" in (out / "bf16_test.log").read_text()
    assert "| forward b2 |" in (out / "speed.md").read_text()
    assert [row["name"] for row in json.loads((out / "speed.json").read_text())["rows"]] == ["forward b2"]


def test_gpu_check_script_without_an_output_folder_is_a_usage_error():
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("usage:")


def test_recipes_script_scores_samplers_and_guidance(tmp_path):
    """A tiny class-conditional recipe: trained for fixed steps, scored with a sampler and at two guidance
    scales; the table, the per-class accuracies and the grids are written."""
    tiny = (
        'model.block_out_channels=[8,16];model.down_block_types=["DownBlock2D","AttnDownBlock2D"];'
        'model.up_block_types=["AttnUpBlock2D","UpBlock2D"];model.norm_num_groups=4;'
        "model.attention_head_dim=4;train.batch_size=8;train.warmup_steps=1"
    )
    out = tmp_path / "recipes"
    table = run_script(
        "recipes.py",
        "--recipe", f"c=configs/digits_cond.py:{tiny}",
        "--steps", "c=2",
        "--curve", "c=edm:2",
        "--guidance_scales", "1,2",
        "--num_samples", "20",
        "--sample_chunk", "10",
        "--out", str(out),
    )  # fmt: skip
    assert "| c | 2 |" in table and "| edm | 2 | 3 |" in table
    result = json.loads((out / "results.json").read_text())
    guidance = result["recipes"]["c"]["guidance"]
    assert sorted(guidance) == ["1.0", "2.0"]
    for row in guidance.values():
        assert len(row["per_class_accuracy"]) == 10 and 0 <= row["accuracy"] <= 1 and math.isfinite(row["fd"])
    assert (out / "c_edm_2.png").exists() and (out / "c_guidance_2.0.png").exists()


def test_same_program_prints_the_two_hashes():
    printed = run_script("same_program.py", "--steps", "2")
    lines = [line for line in printed.splitlines() if line.startswith(("train step:", "ddim-2 sampling:"))]
    assert len(lines) == 2 and all(len(line.split()[-3]) == 16 for line in lines)
