"""Every bad input of issue 6 through the real command lines (``train.py`` / ``sample.py`` in a subprocess):
one line ``error: ...`` on stderr naming the bad value, exit status 2, no traceback, and nothing
written or written over (no new workdir, an existing run's files byte-identical, an existing ``--out``
untouched).

Also the inputs that must *work*: images of mixed sizes and modes with a few corrupt files among them
train, and the log says how many files were skipped.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests._mp_worker import REPO, TINY_CONFIG, subprocess_env
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

TIMEOUT = 600


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(shared_cache_dir(tmp_path_factory))


def _cli(script, *args, env, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(workdir, *flags, env, config=TINY_CONFIG):
    # One step: should a bad input be accepted, the run ends soon (and the test fails) instead of training on.
    return _cli(
        "train.py", "--config", config, "--workdir", workdir, "--config.train.num_steps=1", *flags, env=env
    )


def assert_user_error(proc, *fragments):
    """Exit 2 and exactly one stderr line, ``error: ...``, holding every fragment; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _snapshot(folder):
    """{relative path: sha256} of every file under ``folder``."""
    found = {}
    for d, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _config_file(tmp_path, body):
    """A config file extending the tiny config: ``body`` edits ``config``."""
    path = tmp_path / "my_config.py"
    path.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tiny', {TINY_CONFIG!r})\n"
        "tiny = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(tiny)\n\n\n"
        "def get_config():\n"
        "    config = tiny.get_config()\n"
        f"    {body}\n"
        "    return config\n"
    )
    return path


def _write_images(folder, corrupt):
    """Mixed sizes and modes (grayscale, RGB, RGBA, palette, 16-bit), in a subfolder too, plus
    ``corrupt`` files that are not decodable images."""
    rng = np.random.default_rng(0)
    os.makedirs(folder / "sub", exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8), "L").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), np.uint8), "RGB").save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 5, 4), np.uint8), "RGBA").save(folder / "c.png")
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), np.uint8), "RGB").convert("P").save(folder / "d.gif")
    Image.fromarray(rng.integers(0, 65535, (12, 12), np.uint16)).save(folder / "e.tif")
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), np.uint8), "RGB").save(folder / "sub" / "f.bmp")
    for i in range(corrupt):
        (folder / f"broken_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))
    with open(folder / "b.jpg", "rb") as f:
        (folder / "sub" / "cut.jpg").write_bytes(f.read()[:40])  # a truncated JPEG
    return 6, corrupt + 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A finished one-step run of the tiny config on a folder of mixed and corrupt images."""
    root = tmp_path_factory.mktemp("trained")
    good, bad = _write_images(root / "images", corrupt=2)
    workdir = root / "run"
    proc = _train(workdir, f"--config.data.source=folder:{root / 'images'}", env=env)
    return workdir, proc, good, bad


# -- train.py --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.train.learnin_rate=0.1", "train.learnin_rate"),
        ("--config.model.block_out_channel=(8,16)", "model.block_out_channel"),
        ("--config.trian.batch_size=8", "trian"),
    ],
)
def test_unknown_config_key_on_the_command_line(tmp_path, env, flag, fragment):
    assert_user_error(_train(tmp_path / "run", flag, env=env), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("config.train.learnin_rate = 0.1", "learnin_rate"),
        ("config.model.block_out_channel = (8, 16)", "block_out_channel"),
        ("config.data.image_sise = 8", "image_sise"),
    ],
)
def test_unknown_config_key_in_a_config_file(tmp_path, env, body, fragment):
    proc = _train(tmp_path / "run", env=env, config=_config_file(tmp_path, body))
    assert_user_error(proc, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.train.batch_size=eight", "batch_size"),
        ("--config.train.learning_rate=fast", "learning_rate"),
        ("--config.train.batch_size=0", "batch_size"),
    ],
)
def test_wrong_type_on_the_command_line(tmp_path, env, flag, fragment):
    assert_user_error(_train(tmp_path / "run", flag, env=env), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("config.train.batch_size = '8'", "train.batch_size"),
        ("config.model.block_out_channels = 16", "block_out_channels"),
        ("config.data.random_flip = 'yes'", "random_flip"),
    ],
)
def test_wrong_type_in_a_config_file(tmp_path, env, body, fragment):
    proc = _train(tmp_path / "run", env=env, config=_config_file(tmp_path, body))
    assert_user_error(proc, fragment)
    assert not (tmp_path / "run").exists()


def test_missing_data_folder(tmp_path, env):
    missing = tmp_path / "no_such_folder"
    assert_user_error(
        _train(tmp_path / "run", f"--config.data.source=folder:{missing}", env=env), str(missing)
    )
    assert not (tmp_path / "run").exists()


def test_empty_data_folder(tmp_path, env):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    assert_user_error(_train(tmp_path / "run", f"--config.data.source=folder:{empty}", env=env), str(empty))
    assert not (tmp_path / "run").exists()


def test_folder_of_only_corrupt_images(tmp_path, env):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(3):
        (folder / f"x{i}.png").write_bytes(b"not a png at all")
    line = assert_user_error(_train(tmp_path / "run", f"--config.data.source=folder:{folder}", env=env))
    assert "no usable images" in line and "3" in line
    assert not (tmp_path / "run").exists()


def test_mixed_sizes_and_modes_train_and_corrupt_files_are_skipped_and_counted(trained):
    workdir, proc, good, bad = trained
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"skipped {bad} of {good + bad} image files" in proc.stderr
    assert os.listdir(workdir / "checkpoints") == ["1"]
    assert (workdir / "diffusers" / "model_index.json").exists()


def test_tfds_dataset_that_does_not_exist(tmp_path, env):
    flags = ["--config.data.source=tfds:no_such_dataset_xyz", f"--config.data.data_dir={tmp_path / 'tfds'}"]
    assert_user_error(_train(tmp_path / "run", *flags, env=env), "no_such_dataset_xyz")
    assert not (tmp_path / "run").exists()


def test_batch_size_the_devices_do_not_divide(tmp_path, tmp_path_factory):
    two_devices = subprocess_env(shared_cache_dir(tmp_path_factory), num_devices=2)
    line = assert_user_error(_train(tmp_path / "run", "--config.train.batch_size=7", env=two_devices), "7")
    assert "device count 2" in line
    assert not (tmp_path / "run").exists()


def test_workdir_of_a_different_model_config(trained, env):
    workdir = trained[0]
    before = _snapshot(workdir)
    line = assert_user_error(_train(workdir, "--config.model.layers_per_block=2", env=env), str(workdir))
    assert "different model config" in line and "layers_per_block" in line
    assert _snapshot(workdir) == before


@pytest.mark.parametrize(
    "flag, fragment",
    [
        ("--config.diffusion.loss_weighting=min_snr_gamma", "loss_weighting"),
        ("--config.diffusion.variance_type=fixed", "variance_type"),  # only DDPM sampling / the export use it
        ("--config.diffusion.timestep_spacing=even", "timestep_spacing"),
    ],
)
def test_bad_diffusion_value_is_refused_before_the_run_is_touched(trained, env, flag, fragment):
    """Values only the loss or a sampler reads are checked before ``config.json`` or a checkpoint is
    written: the existing run (its config.json included) stays as it was."""
    workdir = trained[0]
    before = _snapshot(workdir)
    assert_user_error(_train(workdir, flag, env=env), fragment)
    assert _snapshot(workdir) == before


# -- sample.py -------------------------------------------------------------------------------------------


@pytest.fixture
def existing_out(tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"an earlier grid")
    return out


def test_sample_without_a_checkpoint(tmp_path, env, existing_out):
    assert_user_error(
        _cli("sample.py", "--workdir", tmp_path / "nowhere", "--out", existing_out, env=env), "nowhere"
    )
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert_user_error(_cli("sample.py", "--workdir", empty, "--out", existing_out, env=env), str(empty))
    assert existing_out.read_bytes() == b"an earlier grid" and os.listdir(empty) == []


def test_sample_with_a_damaged_run_without_checkpoints(trained, tmp_path, env, existing_out):
    """A run directory whose checkpoints are gone (only config.json etc. left)."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    before = _snapshot(run)
    assert_user_error(_cli("sample.py", "--workdir", run, "--out", existing_out, env=env), "checkpoint")
    assert _snapshot(run) == before and existing_out.read_bytes() == b"an earlier grid"


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--sampler", "plms"], ["plms", "ddim"]),
        (["--steps", "0"], ["--steps=0", "positive"]),
        (["--steps", "1001"], ["1001", "1000"]),
    ],
)
def test_sample_with_a_bad_sampler_or_steps(trained, env, existing_out, flags, fragments):
    workdir = trained[0]
    before = _snapshot(workdir)
    proc = _cli("sample.py", "--workdir", workdir, "--out", existing_out, *flags, env=env)
    assert_user_error(proc, *fragments)
    assert _snapshot(workdir) == before and existing_out.read_bytes() == b"an earlier grid"


def test_sample_from_a_diffusers_folder_with_an_unsupported_block(tmp_path, env, existing_out):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "SkipDownBlock2D"),
        up_block_types=("SkipUpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipeline")
    for folder in (tmp_path / "pipeline", tmp_path / "pipeline" / "unet"):
        proc = _cli("sample.py", "--pretrained", folder, "--out", existing_out, env=env)
        assert_user_error(proc, "SkipDownBlock2D", "DownBlock2D")
    assert existing_out.read_bytes() == b"an earlier grid"
