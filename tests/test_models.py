"""jaxdiff.models against diffusers' UNet2DModel (torch, CPU): same config -> same parameter count,
same weights -> same outputs; plus the course's BasicUNet, config validation and the bf16 path."""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.interop.diffusers import params_to_state_dict, state_dict_to_params
from jaxdiff.models import UNET2D_DEFAULTS, BasicUNet, UNet2D, create_model, functional, param_count
from tests.conftest import assert_close

COURSE_32 = dict(
    sample_size=32,
    block_out_channels=(64, 128, 128, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
COURSE_MNIST = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
SMALL = dict(
    sample_size=16,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
TINY = dict(SMALL, sample_size=8, block_out_channels=(8, 16), norm_num_groups=4)
CONFIGS = {
    "course_32": COURSE_32,
    "course_mnist": COURSE_MNIST,
    # scale-shift conditioning, small groups, resnet resampling in attention blocks, the other
    # time-embedding options, a non-unit mid-block scale, asymmetric downsample padding.
    "scale_shift": dict(
        SMALL,
        norm_num_groups=4,
        resnet_time_scale_shift="scale_shift",
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        downsample_type="resnet",
        upsample_type="resnet",
        attention_head_dim=4,
        act_fn="mish",
        downsample_padding=0,
        mid_block_scale_factor=1.41,
        flip_sin_to_cos=False,
        freq_shift=1,
        center_input_sample=True,
        attn_norm_num_groups=2,  # scale_shift alone leaves the mid-block attention without a norm
    ),
    "fourier": dict(
        SMALL, time_embedding_type="fourier", attention_head_dim=None, act_fn="gelu", time_embedding_dim=48
    ),
    "class_conditional": dict(SMALL, num_class_embeds=10, add_attention=False),
    "class_identity": dict(SMALL, class_embed_type="identity", act_fn="relu"),
    "class_timestep_learned": dict(
        SMALL,
        class_embed_type="timestep",
        time_embedding_type="learned",
        num_train_timesteps=1000,
        mid_block_type=None,
    ),
}


def perturbed_diffusers_unet(config: dict, seed: int = 0) -> UNet2DModel:
    """A diffusers UNet2DModel with noise added to every weight, so none sits at its init value."""
    torch.manual_seed(seed)
    model = UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def run_torch(model, x_nhwc, t, class_labels=None) -> np.ndarray:
    with torch.no_grad():
        out = model(
            torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))),
            torch.from_numpy(np.asarray(t)),
            class_labels=None if class_labels is None else torch.from_numpy(class_labels),
        ).sample
    return out.numpy().transpose(0, 2, 3, 1)


def timesteps_and_labels(name: str, batch: int):
    if name == "fourier":  # a score-SDE model takes noise levels (log is taken), not indices
        return [np.array([0.01, 80.0], np.float32), np.array([1.5, 3.0], np.float32)], None
    if name == "class_identity":  # the labels are embeddings, added to the time embedding as they are
        return [np.array([0, 999]), np.array([500, 17])], np.random.RandomState(2).randn(batch, 64).astype(
            np.float32
        )
    labels = np.array([3, 7], np.int64)[:batch] if name.startswith("class") else None
    return [np.array([0, 999]), np.array([500, 17]), np.array([250, 250])], labels


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name):
    config = CONFIGS[name]
    torch_model = perturbed_diffusers_unet(config)
    model = create_model(dict(torch_model.config), rngs=nnx.Rngs(0))
    assert param_count(model) == torch_model.num_parameters()

    params = state_dict_to_params(numpy_state_dict(torch_model), dict(torch_model.config))
    apply_fn, _ = functional(model)
    apply_fn = jax.jit(apply_fn)
    size = config["sample_size"]
    x = np.random.RandomState(1).randn(2, size, size, config.get("in_channels", 3)).astype(np.float32)
    timesteps, labels = timesteps_and_labels(name, 2)
    for t in timesteps:
        ref = run_torch(torch_model, x, t, labels)
        out = apply_fn(
            params, jnp.asarray(x), jnp.asarray(t), None if labels is None else jnp.asarray(labels)
        )
        assert out.dtype == jnp.float32
        assert_close(out, ref)


def test_scalar_timestep_broadcasts():
    model = create_model(TINY, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    apply_fn = jax.jit(apply_fn)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
    np.testing.assert_array_equal(apply_fn(params, x, 42), apply_fn(params, x, jnp.full((3,), 42)))


def test_bf16_compute_stays_close_to_float32():
    torch_model = perturbed_diffusers_unet(COURSE_MNIST)
    params = state_dict_to_params(numpy_state_dict(torch_model), COURSE_MNIST)
    f32_fn, _ = functional(create_model(COURSE_MNIST, rngs=nnx.Rngs(0)))
    bf16_model = create_model(COURSE_MNIST, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    bf16_fn, bf16_params = functional(bf16_model)
    assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {jnp.dtype(jnp.float32)}
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    t = jnp.array([10, 900])
    ref = jax.jit(f32_fn)(params, x, t)
    out = jax.jit(bf16_fn)(params, x, t)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # bfloat16 keeps 8 bits of mantissa; through ~40 layers a few percent of the scale is expected.
    assert_close(out, ref, rel=5e-2)
    # and the cast really happens: bf16 results are not the float32 ones
    assert float(jnp.abs(out - ref).max()) > 0


def test_dropout_only_with_a_key_and_gradients_flow():
    model = create_model(dict(TINY, dropout=0.3), rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.array([1, 2])
    train = jax.jit(apply_fn)
    eval_a, eval_b = train(params, x, t), train(params, x, t)
    np.testing.assert_array_equal(eval_a, eval_b)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(train(params, x, t, None, k1), train(params, x, t, None, k1))
    assert float(jnp.abs(train(params, x, t, None, k1) - train(params, x, t, None, k2)).max()) > 1e-3
    assert float(jnp.abs(train(params, x, t, None, k1) - eval_a).max()) > 1e-3

    grads = jax.jit(jax.grad(lambda p: jnp.mean(apply_fn(p, x, t) ** 2)))(params)
    norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)


def test_config_dict_lists_and_tuples_build_the_same_model():
    cfg = ml_collections.ConfigDict(
        {
            **COURSE_MNIST,
            "block_out_channels": [32, 64, 64],
            "down_block_types": list(COURSE_MNIST["down_block_types"]),
        }
    )
    a = functional(create_model(cfg, rngs=nnx.Rngs(0)))[1]
    b = functional(create_model(COURSE_MNIST, rngs=nnx.Rngs(0)))[1]
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_defaults_table_is_diffusers_signature():
    signature = inspect.signature(UNet2DModel.__init__).parameters
    assert {k: p.default for k, p in signature.items() if k != "self"} == UNET2D_DEFAULTS


def test_every_default_key_is_accepted():
    # diffusers' own default model (224..896 channels) as a config.json would write it; shapes only.
    config = {
        **UNET2D_DEFAULTS,
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.42.1",
        "_name_or_path": "x",
    }
    abstract = nnx.eval_shape(lambda: create_model(config, rngs=nnx.Rngs(0)))
    assert isinstance(abstract, UNet2D)
    with torch.device("meta"):
        reference = UNet2DModel()
    assert param_count(abstract) == reference.num_parameters()


@pytest.mark.parametrize(
    "key, value",
    [
        ("down_block_types", ("CrossAttnDownBlock2D", "DownBlock2D")),
        ("up_block_types", ("SkipUpBlock2D", "UpBlock2D")),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
        ("resnet_time_scale_shift", "spatial"),
        ("time_embedding_type", "sinusoidal"),
        ("act_fn", "tanh"),
        ("class_embed_type", "projection"),
        ("downsample_type", "fir"),
        ("block_out_channels", (16, 32, 64)),  # three channel counts for two block types
        ("norm_num_groups", 5),  # does not divide 16
        ("attention_head_dim", 64),  # more than the 32 channels it splits
    ],
)
def test_unsupported_values_raise_user_error_naming_them(key, value):
    with pytest.raises(UserError) as err:
        create_model({**SMALL, key: value}, rngs=nnx.Rngs(0))
    message = str(err.value)
    assert key in message
    shown = value[0] if isinstance(value, tuple) and key.endswith("types") else value
    assert str(shown) in message


def test_unknown_key_and_class_name_raise_user_error():
    with pytest.raises(UserError, match="cross_attention_dim"):
        create_model({**SMALL, "cross_attention_dim": 768}, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="UNet2DConditionModel"):
        create_model({**SMALL, "_class_name": "UNet2DConditionModel"}, rngs=nnx.Rngs(0))


def test_class_labels_are_checked():
    apply_fn, params = functional(create_model(dict(SMALL, num_class_embeds=4), rngs=nnx.Rngs(0)))
    x = jnp.zeros((2, 16, 16, 3))
    with pytest.raises(UserError, match="class_labels"):
        apply_fn(params, x, jnp.array([1, 2]))
    apply_fn, params = functional(create_model(SMALL, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match="class_labels"):
        apply_fn(params, x, jnp.array([1, 2]), jnp.array([0, 1]))


class CourseBasicUNet(torch.nn.Module):
    """The course's "from scratch" UNet, written out in PyTorch as the reference."""

    def __init__(self, in_channels=1, out_channels=1):
        super().__init__()
        conv = lambda i, o: torch.nn.Conv2d(i, o, kernel_size=5, padding=2)
        self.down_layers = torch.nn.ModuleList([conv(in_channels, 32), conv(32, 64), conv(64, 64)])
        self.up_layers = torch.nn.ModuleList([conv(64, 64), conv(64, 32), conv(32, out_channels)])
        self.act = torch.nn.SiLU()
        self.downscale = torch.nn.MaxPool2d(2)
        self.upscale = torch.nn.Upsample(scale_factor=2)

    def forward(self, x):
        h = []
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))
            if i < 2:
                h.append(x)
                x = self.downscale(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x)
                x += h.pop()
            x = self.act(layer(x))
        return x


def test_basic_unet_matches_the_course_model():
    torch.manual_seed(0)
    reference = CourseBasicUNet().eval()
    config = {"_class_name": "BasicUNet", "in_channels": 1, "out_channels": 1}
    model = create_model(config, rngs=nnx.Rngs(0))
    assert isinstance(model, BasicUNet)
    assert param_count(model) == sum(p.numel() for p in reference.parameters())
    params = state_dict_to_params(numpy_state_dict(reference), config)
    apply_fn, _ = functional(model)
    x = np.random.RandomState(0).randn(2, 28, 28, 1).astype(np.float32)
    with torch.no_grad():
        ref = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    apply_fn = jax.jit(apply_fn)
    out = apply_fn(params, jnp.asarray(x), jnp.array([5, 6]))
    assert out.dtype == jnp.float32
    assert_close(out, ref)
    # the timestep is ignored
    np.testing.assert_array_equal(out, apply_fn(params, jnp.asarray(x), jnp.array([900, 0])))
    rt = params_to_state_dict(params)
    assert all(np.array_equal(rt[k], v) for k, v in numpy_state_dict(reference).items())


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (1, 4, 4, 8)])
def test_upsample_conv_by_phases_equals_conv_of_the_upsampled_image(shape):
    """Upsample2D's four 2x2 phase convolutions compute conv3x3(nearest_2x(x)), values and gradients."""
    from jax import lax

    from jaxdiff.models import layers

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 5)), jnp.float32)

    def reference(x, k):
        up = layers.upsample_nearest_2x(x)
        return lax.conv_general_dilated(
            up, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    ours = layers.upsample_nearest_2x_conv3x3(x, k)
    assert ours.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
    np.testing.assert_allclose(ours, reference(x, k), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(layers.upsample_nearest_2x_conv3x3(x, k))), (0, 1))(x, k)
    g_ref = jax.grad(lambda x, k: jnp.sum(jnp.sin(reference(x, k))), (0, 1))(x, k)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
