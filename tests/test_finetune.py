"""Fine-tuning (issue 23): ``train.init_from`` a workdir or a diffusers folder starts a fresh run from
those weights (parameters and EMA), with a fresh optimizer at step 0; a different model is a one-line
error; a run's own checkpoint wins over ``init_from``."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.inference import load_workdir
from jaxdiff.interop import save_pipeline
from jaxdiff.models import create_model, functional
from jaxdiff.run_config import parse_run_config
from jaxdiff.training.components import build_components
from jaxdiff.training.init_from import resolve_init_from
from jaxdiff.training.trainer import train_and_evaluate
from tests._tiny_config import get_config as tiny_config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_same(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _finetune_config(init_from, **model):
    config = tiny_config()
    config.train.init_from = str(init_from)
    config.diffusion.beta_schedule = "squaredcos_cap_v2"  # another schedule: allowed
    for key, value in model.items():
        config.model[key] = value
    return config


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    """A pipeline folder of the tiny config's model with random weights (as from another library)."""
    run = parse_run_config(tiny_config())
    _, params = functional(create_model(run.model, rngs=nnx.Rngs(7)))
    folder = tmp_path_factory.mktemp("pipe")
    save_pipeline(folder, params, run.model, {"_class_name": "DDPMScheduler"})
    return folder, params


@pytest.mark.parametrize("where", ["pipeline", "unet"])
def test_init_from_a_diffusers_folder(diffusers_folder, where):
    folder, params = diffusers_folder
    run = parse_run_config(_finetune_config(folder if where == "pipeline" else folder / "unet"))
    source = resolve_init_from(run)
    assert source.kind == "diffusers"
    c = build_components(run)
    state = c.init_state_from(source.load_params())
    fresh = c.init_state()
    _assert_same(state.params, params)
    _assert_same(state.ema_params, params)
    _assert_same(state.opt_state, fresh.opt_state)  # a fresh optimizer (zero moments, count 0)
    assert int(state.step) == 0
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(params), _leaves(fresh.params), strict=True))


def test_another_architecture_is_a_one_line_error(diffusers_folder):
    folder, _ = diffusers_folder
    run = parse_run_config(_finetune_config(folder, layers_per_block=2))
    with pytest.raises(UserError) as info:
        resolve_init_from(run)
    assert str(info.value).startswith(
        f"train.init_from={str(folder)!r}: model.layers_per_block is 1 there, 2 here"
    )
    assert "\n" not in str(info.value)
    config = _finetune_config(folder)
    config.data.num_classes = 10
    with pytest.raises(UserError, match="model.num_class_embeds is None there, 11 here"):
        resolve_init_from(parse_run_config(config))
    config = _finetune_config(folder, block_out_channels=(12,))
    with pytest.raises(UserError, match=r"model.block_out_channels is \(8,\) there, \(12,\) here"):
        resolve_init_from(parse_run_config(config))


def test_a_missing_or_foreign_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match=r"^train.init_from='/no/such/run' is not a folder"):
        resolve_init_from(parse_run_config(_finetune_config("/no/such/run")))
    with pytest.raises(UserError, match=r"holds no config.json"):
        resolve_init_from(parse_run_config(_finetune_config(tmp_path)))
    assert resolve_init_from(parse_run_config(tiny_config())) is None


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, compilation_cache):
    """A 2-step run of the tiny config (its EMA checkpoint and diffusers export)."""
    workdir = tmp_path_factory.mktemp("source")
    config = tiny_config()
    config.train.num_steps = 2
    train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.slow  # trains the source run and two short fine-tuning runs
def test_init_from_a_workdir_then_resume_wins(source_run, tmp_path, capsys):
    ema = load_workdir(source_run).params
    run = parse_run_config(_finetune_config(source_run))
    source = resolve_init_from(run)
    assert source.kind == "workdir"
    c = build_components(run)
    state = c.init_state_from(source.load_params())
    _assert_same(state.params, ema)
    _assert_same(state.ema_params, ema)
    _assert_same(state.opt_state, c.init_state().opt_state)
    # the export of the source run holds the same (EMA) weights
    via_export = parse_run_config(_finetune_config(source_run / "diffusers"))
    _assert_same(resolve_init_from(via_export).load_params(), ema)

    # a real fine-tuning run: one step from the source's weights (not from a fresh init), from a copy
    copy = shutil.copytree(source_run, tmp_path / "source_copy")
    workdir = tmp_path / "tuned"
    result = train_and_evaluate(_finetune_config(copy), workdir, stop_at_step=1)
    assert (result.start_step, result.step) == (0, 1)
    assert "fine-tuning from the EMA weights of the run in" in capsys.readouterr().err
    lr = tiny_config().train.learning_rate
    for got, want in zip(_leaves(result.state.params), _leaves(ema), strict=True):
        assert np.abs(got - want).max() <= 2 * lr  # one AdamW step from the source

    # the same command again: the run's own checkpoint wins, and the source is not read (it may be gone)
    shutil.rmtree(copy)
    result = train_and_evaluate(_finetune_config(copy), workdir, stop_at_step=2)
    assert (result.start_step, result.step) == (1, 2)
    err = capsys.readouterr().err
    assert "resuming from the checkpoint at step 1" in err and "not used: resuming" in err
