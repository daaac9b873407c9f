"""Bad conditioning / fine-tuning input through ``train.py`` (issue 23): one line ``error: ...``, exit
status 2, no traceback, no workdir created."""

import subprocess
import sys

import pytest
from flax import nnx

from jaxdiff.interop import save_pipeline
from jaxdiff.models import create_model, functional
from jaxdiff.run_config import parse_run_config
from tests._mp_worker import REPO, TINY_CONFIG, load_tiny_config, subprocess_env
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # one train.py process per case


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(shared_cache_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def wider_unet(tmp_path_factory):
    """A diffusers pipeline of the tiny model with two layers per block (another architecture)."""
    config = load_tiny_config()
    config.model.layers_per_block = 2
    model = parse_run_config(config).model
    folder = tmp_path_factory.mktemp("wider")
    save_pipeline(folder, functional(create_model(model, rngs=nnx.Rngs(0)))[1], model, {})
    return folder


def _train(workdir, *flags, env):
    args = ["train.py", "--config", TINY_CONFIG, "--workdir", workdir, "--config.train.num_steps=1", *flags]
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--config.data.num_classes=5"], "has the label 8, outside data.num_classes=5; allowed: 0..4"),
        (["--config.train.cond_drop_prob=0.1"], "train.cond_drop_prob=0.1 is not allowed"),
        (
            ["--config.data.num_classes=10", "--config.model.num_class_embeds=10"],
            "model.num_class_embeds=10 is not allowed; with data.num_classes=10 it must be 11",
        ),
        (["--config.train.init_from=/no/such/run"], "train.init_from='/no/such/run' is not a folder"),
        (["--config.train.init_from=WIDER"], "model.layers_per_block is 2 there, 1 here"),
    ],
    ids=["label_range", "drop_without_null", "embeds_mismatch", "init_from_missing", "init_from_other_model"],
)
def test_bad_conditioning_input_is_one_line(tmp_path, env, wider_unet, flags, fragment):
    flags = [f.replace("WIDER", str(wider_unet)) for f in flags]
    proc = _train(tmp_path / "run", *flags, env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
