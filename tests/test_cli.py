"""train.py and sample.py as a user runs them (subprocesses): a short digits run end to end, the diffusers
export, sampling from the run and from the export, a run on an image folder, and bad input (one line on
stderr, exit status 2, no traceback, nothing written over).

Subprocesses share a persistent XLA compilation cache, so the same tiny model compiles once.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A tiny UNet and a 4-step run, as command-line overrides of configs/digits_ddpm.py.
TINY = [
    "--config.model.block_out_channels=(8,16)",
    "--config.model.down_block_types=('DownBlock2D','AttnDownBlock2D')",
    "--config.model.up_block_types=('AttnUpBlock2D','UpBlock2D')",
    "--config.model.layers_per_block=1",
    "--config.model.norm_num_groups=4",
    "--config.model.attention_head_dim=4",
    "--config.data.num_threads=0",
    "--config.train.batch_size=8",
    "--config.train.num_steps=6",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.train.sample_every=3",
    "--config.sample.num_samples=4",
    "--config.sample.batch_size=4",
    "--config.sample.num_inference_steps=2",
    "--config.train.eval_num_samples=8",  # digits.py scores its EMA samples at the end
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):

    cache = shared_cache_dir(tmp_path_factory)
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def run(args, env, **kwargs):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A 6-step digits run through train.py: its workdir and the process result.

    One run per test session: pytest-xdist workers share it through a lock file (the tests only read it).
    """
    import fcntl

    root = pathlib.Path(shared_cache_dir(tmp_path_factory)).parent
    workdir, record = root / "cli_run" / "digits", root / "cli_run.json"
    with open(root / "cli_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            result = run(
                ["train.py", "--config", "configs/digits_ddpm.py", "--workdir", str(workdir), *TINY], env
            )
            record.write_text(json.dumps({"returncode": result.returncode, "stderr": result.stderr}))
    done = json.loads(record.read_text())
    assert done["returncode"] == 0, done["stderr"][-3000:]
    return workdir, subprocess.CompletedProcess([], done["returncode"], "", done["stderr"])


def test_train_cli_writes_the_run(trained):
    workdir, result = trained
    assert "exported the EMA model as a diffusers pipeline" in result.stderr
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == 6 and config["model"]["block_out_channels"] == [8, 16]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in lines if "eval/digits_fd" not in m]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["loss"]) and m["img_per_s"] > 0 and m["lr"] >= 0 for m in metrics)
    evals = [m for m in lines if "eval/digits_fd" in m]
    assert [m["step"] for m in evals] == [6] and np.isfinite(evals[0]["eval/digits_fd"])
    assert f"step 6: digits FD {evals[0]['eval/digits_fd']:.3f} (real-vs-real floor" in result.stderr
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6]
    assert (workdir / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_export_loads_in_diffusers_and_matches_jaxdiff(trained):
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from diffusers import DDPMPipeline

    from jaxdiff.inference import load_workdir

    workdir, _ = trained
    pipe = DDPMPipeline.from_pretrained(workdir / "diffusers")
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    model = load_workdir(workdir)  # the EMA weights of the newest checkpoint
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    t = np.array([10, 700])
    ours = np.asarray(model.apply_fn(model.params, jnp.asarray(x), jnp.asarray(t)))
    with torch.no_grad():
        theirs = pipe.unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    images = pipe(
        batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 16, 16, 1) and np.isfinite(images).all()


def test_sample_cli_from_the_workdir_and_from_the_export(trained, env, tmp_path):
    from PIL import Image

    workdir, _ = trained
    common = ["--sampler", "ddim", "--steps", "3", "--num_samples", "5", "--batch_size", "4", "--seed", "7"]
    a = run(
        [
            "sample.py",
            "--workdir",
            str(workdir),
            *common,
            "--out",
            str(tmp_path / "a.png"),
            "--npz",
            str(tmp_path / "a.npz"),
            "--process_strip",
            str(tmp_path / "strip.png"),
            "--strip_every",
            "1",
        ],
        env,
    )
    assert a.returncode == 0, a.stderr[-3000:]
    b = run(
        [
            "sample.py",
            "--pretrained",
            str(workdir / "diffusers"),
            *common,
            "--out",
            str(tmp_path / "b.png"),
            "--npz",
            str(tmp_path / "b.npz"),
        ],
        env,
    )
    assert b.returncode == 0, b.stderr[-3000:]
    xa, xb = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    assert xa.shape == (5, 16, 16, 1) and xa.dtype == np.float32
    assert xa.min() >= -1.0 and xa.max() <= 1.0  # the data range, as the message says
    # The same EMA weights and schedule, the same seed: the same images either way.
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-5)
    assert np.load(tmp_path / "a.npz")["x_t"].shape == (3, 5, 16, 16, 1)
    assert Image.open(tmp_path / "a.png").size == Image.open(tmp_path / "b.png").size
    # The strip: 4 images x (x_t, predicted x0) rows, 3 recorded steps as columns, 16px upscaled to 64px.
    assert Image.open(tmp_path / "strip.png").size == (3 * 64 + 4 * 2, 8 * 64 + 9 * 2)


def test_train_cli_on_an_image_folder(env, tmp_path):
    from PIL import Image

    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        size = (20 + i, 24) if i % 2 else (16, 16)
        mode = "RGB" if i % 3 else "L"
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(), mode=mode).save(folder / f"img{i}.png")
    workdir = tmp_path / "run"
    args = ["train.py", "--config", "configs/digits_ddpm.py", "--workdir", str(workdir), *TINY]
    args += [f"--config.data.source=folder:{tmp_path / 'images'}"]
    result = run(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["data"]["source"].startswith("folder:")
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 6
    assert (workdir / "diffusers" / "model_index.json").exists()


def _assert_one_line_error(result, match: str):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert match in errors[0], errors[0]


def test_bad_input_is_one_line_exit_2(trained, env, tmp_path):
    workdir, _ = trained
    before = {p: p.read_bytes() for p in [workdir / "config.json", workdir / "metrics.jsonl"]}
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(workdir / "config.json", no_ckpt / "config.json")
    bad_unet = tmp_path / "bad_unet"
    shutil.copytree(workdir / "diffusers" / "unet", bad_unet)
    unet_config = json.loads((bad_unet / "config.json").read_text())
    unet_config["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D"]
    (bad_unet / "config.json").write_text(json.dumps(unet_config))
    digits = ["train.py", "--config", "configs/digits_ddpm.py", "--workdir", str(tmp_path / "w"), *TINY]
    cases = [
        (digits + ["--config.train.foo=1"], {}, "unknown config key 'train.foo'"),
        (digits + ["--config.train.batch_size=abc"], {}, "--config.train.batch_size=abc"),
        (["train.py", "--config", "configs/nope.py"], {}, "cannot load --config 'configs/nope.py'"),
        (["train.py"], {}, "--config is required"),
        (
            digits + ["--config.train.batch_size=3"],
            {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            "train.batch_size=3 must be a positive multiple of the device count 2",
        ),
        (digits + ["--config.model.norm_num_groups=0"], {}, "norm_num_groups=0"),
        (digits + ["--config.sample.sampler=lms"], {}, "sample.sampler='lms'"),
        (digits + [f"--config.data.source=folder:{tmp_path / 'missing'}"], {}, "missing"),
        (
            [
                "train.py",
                "--config",
                "configs/digits_ddpm.py",
                "--workdir",
                str(workdir),
                *TINY,
                "--config.model.layers_per_block=2",
            ],
            {},
            "holds a checkpoint of a different model config (layers_per_block: 1 -> 2)",
        ),
        (["sample.py", "--workdir", str(tmp_path)], {}, "has no config.json"),
        (["sample.py", "--workdir", str(no_ckpt)], {}, "no checkpoint in"),
        (["sample.py", "--workdir", str(workdir), "--sampler", "lms"], {}, "--sampler='lms'"),
        (["sample.py", "--workdir", str(workdir), "--steps", "0"], {}, "--steps=0"),
        (["sample.py", "--workdir", str(workdir), "--steps", "1001"], {}, "--steps=1001"),
        (["sample.py"], {}, "give exactly one of --workdir"),
        (["sample.py", "--pretrained", str(tmp_path / "missing")], {}, "is not a folder"),
        (["sample.py", "--pretrained", str(bad_unet)], {}, "CrossAttnDownBlock2D"),
    ]

    def run_case(case):
        args, extra_env, _ = case
        return run(args, {**env, **extra_env}, timeout=600)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # each case mostly waits for its imports
        results = list(pool.map(run_case, cases))
    failures = []
    for (args, _, match), result in zip(cases, results, strict=True):
        try:
            _assert_one_line_error(result, match)
        except AssertionError as e:
            failures.append(f"{' '.join(args[:1] + args[-2:])}: {e}")
    assert not failures, "\n".join(failures)
    # Nothing of the existing run was written over, and the bad runs wrote no workdir.
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "w").exists()
