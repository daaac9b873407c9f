"""jaxdiff.interop.diffusers: weights and pipeline folders round-trip with diffusers (torch, CPU)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, UNet2DModel
from flax import nnx
from safetensors.numpy import load_file

from jaxdiff.errors import UserError
from jaxdiff.interop.diffusers import (
    load_pipeline,
    load_unet,
    params_to_state_dict,
    save_pipeline,
    save_unet,
    state_dict_to_params,
)
from jaxdiff.models import create_model, functional
from jaxdiff.models.config import unet2d_config
from tests.conftest import assert_close

SMALL = dict(
    sample_size=16,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
CLASS_SCALE_SHIFT = dict(
    SMALL,
    num_class_embeds=5,
    resnet_time_scale_shift="scale_shift",
    attention_head_dim=4,
    norm_num_groups=4,
    downsample_padding=0,
)


def perturbed_jaxdiff_params(config, seed=0, dtype=jnp.float32):
    """jaxdiff params with noise on every leaf (group-norm scales are 1 and biases 0 at init)."""
    _, params = functional(create_model(config, rngs=nnx.Rngs(seed), param_dtype=dtype))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(seed + 1)
    noisy = [x + jnp.asarray(0.05 * rng.randn(*x.shape), x.dtype) for x in leaves]
    return jax.tree.unflatten(treedef, noisy)


def perturbed_diffusers_unet(config, seed=0):
    torch.manual_seed(seed)
    model = UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def torch_forward(model, x_nhwc, t, labels=None):
    with torch.no_grad():
        out = model(
            torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2))),
            torch.from_numpy(np.asarray(t)),
            class_labels=None if labels is None else torch.from_numpy(np.asarray(labels)),
        ).sample
    return out.numpy().transpose(0, 2, 3, 1)


def inputs(config, batch=2, seed=0):
    size = config["sample_size"]
    x = np.random.RandomState(seed).randn(batch, size, size, config.get("in_channels", 3)).astype(np.float32)
    labels = (
        np.arange(batch, dtype=np.int64) % config["num_class_embeds"]
        if "num_class_embeds" in config
        else None
    )
    return x, np.array([7, 930][:batch]), labels


@pytest.mark.parametrize("config", [SMALL, CLASS_SCALE_SHIFT], ids=["plain", "class_scale_shift"])
def test_save_unet_loads_in_diffusers_with_the_same_outputs(tmp_path, config):
    params = perturbed_jaxdiff_params(config)
    save_unet(tmp_path, params, config)

    torch_model = UNet2DModel.from_pretrained(tmp_path).eval()
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    expected = params_to_state_dict(params)
    assert set(state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)

    apply_fn, _ = functional(create_model(config, rngs=nnx.Rngs(0)))
    x, t, labels = inputs(config)
    out = jax.jit(apply_fn)(params, x, t, labels)
    assert_close(out, torch_forward(torch_model, x, t, labels))

    # and back: load_unet reads what it wrote
    apply_back, params_back, config_back = load_unet(tmp_path)
    assert config_back == unet2d_config(config)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_back), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.jit(apply_back)(params_back, x, t, labels), out)


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_load_unet_reads_a_diffusers_folder(tmp_path, safe_serialization):
    torch_model = perturbed_diffusers_unet(CLASS_SCALE_SHIFT)
    torch_model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    apply_fn, params, config = load_unet(tmp_path)
    assert config == unet2d_config(dict(torch_model.config))
    x, t, labels = inputs(CLASS_SCALE_SHIFT)
    assert_close(jax.jit(apply_fn)(params, x, t, labels), torch_forward(torch_model, x, t, labels))


def test_bfloat16_params_are_saved_as_float32(tmp_path):
    params = perturbed_jaxdiff_params(SMALL, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    save_unet(tmp_path, params, SMALL)
    weights = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {np.dtype(np.float32)}
    for key, value in params_to_state_dict(params).items():
        np.testing.assert_array_equal(weights[key], value)
    UNet2DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "scheduler_config, pipeline_cls",
    [
        (
            {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"},
            DDPMPipeline,
        ),
        ({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "clip_sample": False}, DDIMPipeline),
    ],
    ids=["ddpm", "ddim"],
)
def test_save_pipeline_loads_in_diffusers_and_back(tmp_path, scheduler_config, pipeline_cls):
    params = perturbed_jaxdiff_params(SMALL)
    save_pipeline(tmp_path, params, SMALL, scheduler_config)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_cls.__name__

    pipeline = pipeline_cls.from_pretrained(tmp_path)
    assert type(pipeline.scheduler).__name__ == scheduler_config["_class_name"]
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    images = pipeline(
        batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    apply_fn, params_back, unet_config, sched_back = load_pipeline(tmp_path)
    assert unet_config == unet2d_config(SMALL)
    assert {k: v for k, v in sched_back.items() if k != "_diffusers_version"} == scheduler_config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_back), strict=True):
        np.testing.assert_array_equal(a, b)
    x, t, _ = inputs(SMALL, batch=1)
    assert_close(jax.jit(apply_fn)(params_back, x, t), torch_forward(pipeline.unet, x, t))


def test_scheduler_class_name_defaults_to_ddpm_and_is_checked(tmp_path):
    params = perturbed_jaxdiff_params(SMALL)
    save_pipeline(tmp_path, params, SMALL, {"num_train_timesteps": 50})
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    sched = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDPMScheduler" and sched["num_train_timesteps"] == 50
    with pytest.raises(UserError, match="not a scheduler"):
        save_pipeline(tmp_path / "bad", params, SMALL, {"_class_name": "not a scheduler"})


def test_converters_are_exact_inverses_and_accept_pure_dicts():
    params = perturbed_jaxdiff_params(CLASS_SCALE_SHIFT)
    state = params_to_state_dict(params)
    assert state["conv_in.weight"].shape == (16, 3, 3, 3)  # OIHW
    assert state["time_embedding.linear_1.weight"].shape == (64, 16)  # [out, in]
    assert "down_blocks.1.attentions.0.to_out.0.weight" in state
    assert "conv_norm_out.weight" in state  # group-norm scale
    back = state_dict_to_params(state, CLASS_SCALE_SHIFT)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)
    pure = params_to_state_dict(nnx.to_pure_dict(params))
    assert pure.keys() == state.keys() and all(np.array_equal(pure[k], state[k]) for k in state)


def test_pre_0_13_attention_names_are_renamed():
    state = params_to_state_dict(perturbed_jaxdiff_params(SMALL))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[key] = value
    assert legacy.keys() != state.keys()
    back = params_to_state_dict(state_dict_to_params(legacy, SMALL))
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_mismatched_weights_raise_user_error():
    state = params_to_state_dict(perturbed_jaxdiff_params(SMALL))
    missing = {k: v for k, v in state.items() if k != "conv_in.bias"}
    with pytest.raises(UserError, match="conv_in.bias"):
        state_dict_to_params(missing, SMALL)
    with pytest.raises(UserError, match="extra.weight"):
        state_dict_to_params({**state, "extra.weight": np.zeros(3)}, SMALL)
    with pytest.raises(UserError, match="conv_out.weight"):
        state_dict_to_params({**state, "conv_out.weight": np.zeros((3, 16, 5, 5), np.float32)}, SMALL)
    with pytest.raises(UserError, match="block_out_channels"):
        save_unet(
            "/nonexistent/never-written",
            perturbed_jaxdiff_params(SMALL),
            dict(SMALL, block_out_channels=(16,)),
        )


def _write_folder(path, config, state):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **config}))
    save_file(state, str(path / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize(
    "key, value",
    [
        ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D"]),
        ("up_block_types", ["AttnSkipUpBlock2D", "UpBlock2D"]),
        ("time_embedding_type", "ada"),
        ("some_new_key", 1),
    ],
)
def test_unsupported_diffusers_folders_raise_user_error(tmp_path, key, value):
    state = params_to_state_dict(perturbed_jaxdiff_params(SMALL))
    config = {**{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}, key: value}
    _write_folder(tmp_path / "unet", config, state)
    with pytest.raises(UserError) as err:
        load_unet(tmp_path / "unet")
    assert key in str(err.value)
    if key.endswith("types"):
        assert value[1] in str(err.value) or value[0] in str(err.value)


def test_missing_files_and_basic_unet_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **SMALL}))
    with pytest.raises(UserError, match="diffusion_pytorch_model.safetensors"):
        load_unet(tmp_path)
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline(tmp_path)
    basic = {"_class_name": "BasicUNet"}
    _, params = functional(create_model(basic, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match="BasicUNet"):
        save_unet(tmp_path / "basic", params, basic)
