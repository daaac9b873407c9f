"""sample.py's class labels and guidance flags as a user runs them (subprocesses) on a class-conditional
diffusers UNet folder: labels in the npz, one grid row per class, and bad input (one line, exit 2)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests._mp_worker import REPO, subprocess_env
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # subprocesses

TINY = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8,),
    norm_num_groups=4,
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    add_attention=False,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(shared_cache_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import UNet2DModel

    root = tmp_path_factory.mktemp("guidance_cli")
    UNet2DModel(**TINY, num_class_embeds=5).save_pretrained(root / "cond")
    UNet2DModel(**TINY).save_pretrained(root / "uncond")
    return root


def _sample(*args, env):
    return subprocess.run(
        [sys.executable, "sample.py", "--steps", "2", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_class_labels_all_give_labels_and_one_row_per_class(folders, tmp_path, env):
    grid, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    proc = _sample(
        "--pretrained",
        folders / "cond",
        "--class_labels",
        "all",
        "--num_samples",
        15,
        "--batch_size",
        4,
        "--out",
        grid,
        "--npz",
        npz,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(npz) as data:
        assert data["images"].shape == (15, 8, 8, 1)
        assert data["labels"].dtype == np.int32
        np.testing.assert_array_equal(data["labels"], np.arange(15) % 5)
    # 5 rows (classes) of 3 images, each 64 px (8 px upscaled 8x) with 2 px padding.
    with Image.open(grid) as image:
        assert image.size == (3 * 66 + 2, 5 * 66 + 2), image.size


def test_explicit_class_labels_cycle(folders, tmp_path, env):
    npz = tmp_path / "s.npz"
    proc = _sample(
        "--pretrained",
        folders / "cond",
        "--class_labels",
        "4,1",
        "--num_samples",
        5,
        "--out",
        tmp_path / "g.png",
        "--npz",
        npz,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(npz) as data:
        np.testing.assert_array_equal(data["labels"], [4, 1, 4, 1, 4])


@pytest.mark.parametrize(
    "folder, flags, fragments",
    [
        ("cond", ["--class_labels", "0,7"], ["class label 7", "0..4"]),
        ("uncond", ["--class_labels", "0"], ["--class_labels", "unconditional"]),
        ("uncond", ["--guidance_scale", "3"], ["--guidance_scale=3", "unconditional"]),
        ("cond", ["--guidance_scale", "3"], ["--guidance_scale=3", "null class"]),
        ("cond", ["--guidance_scale=-1"], ["--guidance_scale=-1.0", ">= 0"]),
        ("cond", ["--guidance_rescale", "1.5"], ["--guidance_rescale=1.5", "[0, 1]"]),
    ],
)
def test_bad_guidance_flags(folders, tmp_path, env, folder, flags, fragments):
    out = tmp_path / "g.png"
    assert_user_error(_sample("--pretrained", folders / folder, "--out", out, *flags, env=env), *fragments)
    assert not out.exists()
