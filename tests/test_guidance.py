"""Guidance at sampling time (``jaxdiff.guidance``): classifier-free guidance against diffusers' formula and
``rescale_noise_cfg``, one batched model call, scale 1 as the unguided path, every registered sampler with
CFG and with loss guidance (exact Gaussian denoisers: both move the samples' mean the way they should),
the sampler plumbing (labels, bad input)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.guiders.guider_utils import rescale_noise_cfg as hf_rescale
from flax import nnx

from jaxdiff import objectives, samplers
from jaxdiff.denoisers.edm import edm_preconditioning
from jaxdiff.errors import UserError
from jaxdiff.guidance import (
    LossGuidance,
    classifier_free_guidance,
    combine_cfg,
    double_batch,
    parse_class_labels,
    rescale_noise_cfg,
    split_batch,
)
from jaxdiff.inference import make_sample_fn
from jaxdiff.models import create_model, functional
from jaxdiff.schedules import make_schedule
from jaxdiff.sharding import make_mesh

# -- the CFG formula ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, rescale", [(3.0, 0.0), (7.5, 0.7), (0.0, 1.0), (1.5, 0.3)])
def test_cfg_equals_diffusers_formula_and_rescale(scale, rescale):
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
    uncond = (0.5 * rng.standard_normal((3, 8, 8, 4)) + 0.2).astype(np.float32)
    ours = np.asarray(combine_cfg(jnp.asarray(cond), jnp.asarray(uncond), scale, rescale))
    # diffusers' pipelines (NCHW): uncond + s (text - uncond), then rescale_noise_cfg when rescale > 0;
    # its ClassifierFreeGuidance guider does the same (the pipelines' copy needs transformers).
    text_t, uncond_t = (torch.from_numpy(a.transpose(0, 3, 1, 2)) for a in (cond, uncond))
    ref = uncond_t + scale * (text_t - uncond_t)
    if rescale > 0:
        ref = hf_rescale(ref, text_t, guidance_rescale=rescale)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    guider = ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale)
    ref = guider.forward(text_t, uncond_t).pred.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # rescale_noise_cfg alone, on the same arrays.
    got = np.asarray(rescale_noise_cfg(jnp.asarray(cond), jnp.asarray(uncond), rescale))
    want = hf_rescale(text_t, uncond_t, guidance_rescale=rescale).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cfg_is_one_batched_call_of_both_halves():
    calls = []

    def model(x, t, labels):
        calls.append((x.shape[0], np.asarray(labels), np.asarray(t)))
        return jnp.sin(x) * (1.0 + labels[:, None, None, None]) + t[:, None, None, None] / 10

    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    t = jnp.array([3.0, 3.0, 3.0, 3.0])
    labels = jnp.array([0, 1, 2, 1], jnp.int32)
    out = classifier_free_guidance(model, labels, null_label=3, guidance_scale=4.0, guidance_rescale=0.5)(
        x, t
    )
    assert len(calls) == 1 and calls[0][0] == 8
    np.testing.assert_array_equal(calls[0][1], [0, 1, 2, 1, 3, 3, 3, 3])
    calls.clear()
    cond, uncond = model(x, t, labels), model(x, t, jnp.full_like(labels, 3))
    np.testing.assert_allclose(out, combine_cfg(cond, uncond, 4.0, 0.5), rtol=1e-6, atol=1e-6)
    # Scale 1: one plain call of the batch, the conditional output itself.
    calls.clear()
    plain = classifier_free_guidance(model, labels, null_label=3, guidance_scale=1.0, guidance_rescale=0.5)
    np.testing.assert_array_equal(plain(x, t), cond)
    assert len(calls) == 1 and calls[0][0] == 4


def test_double_batch_keeps_each_devices_rows_together():
    mesh = make_mesh()
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    a, b = jnp.arange(8.0), -jnp.arange(8.0)
    both = double_batch(a, b, spec)
    assert both.shape == (16,)
    first, second = split_batch(both, spec)
    np.testing.assert_array_equal(first, a)
    np.testing.assert_array_equal(second, b)


# -- every sampler: exact Gaussian denoisers -----------------------------------------------------------------

SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
STD = 0.5  # the data: x0 ~ N(mean(label), STD^2) per pixel
MEANS = jnp.array([0.4, -0.4, 0.0])  # labels 0, 1 and the null label 2
NULL = 2


def _objective_of(name):
    entry = samplers.resolve_sampler(name)
    return next(
        objectives.get_objective(o)
        for o in ("ddpm", "edm", "flow")
        if objectives.get_objective(o).accepts_sampler(entry)
    )


def _posterior_mean(x, mu, signal, noise_std):
    """E[x0 | x] for ``x = signal * x0 + noise_std * n``, x0 ~ N(mu, STD^2)."""
    var = STD**2
    return mu + signal * var / (signal**2 * var + noise_std**2) * (x - signal * mu)


def _gaussian_model(objective_name):
    """``model(x_in, t, labels) -> network output`` of the exact denoiser for the objective's samplers."""
    sigmas = jnp.asarray(np.sqrt((1 - make_schedule().alphas_cumprod) / make_schedule().alphas_cumprod))

    def model(x_in, t, labels):
        mu = MEANS[labels][:, None, None, None]
        t = jnp.broadcast_to(t, x_in.shape[:1]).astype(jnp.float32)[:, None, None, None]
        if objective_name == "ddpm":  # x_in is the VP x_t (the Euler-type samplers scale to it); epsilon
            sigma = jnp.interp(t, jnp.arange(sigmas.shape[0], dtype=jnp.float32), sigmas)
            ab = 1 / (1 + sigma**2)
            x0 = _posterior_mean(x_in, mu, jnp.sqrt(ab), jnp.sqrt(1 - ab))
            return (x_in - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
        if objective_name == "edm":  # x_in = c_in x, t = c_noise; the network F of the preconditioning
            sigma = jnp.exp(4 * t)
            c = edm_preconditioning(sigma, 0.5)
            x = x_in / c.c_in
            return (_posterior_mean(x, mu, 1.0, sigma) - c.c_skip * x) / c.c_out
        s = t / 1000  # flow: x_s = (1 - s) x0 + s n, velocity n - x0
        x0 = _posterior_mean(x_in, mu, 1 - s, s)
        return (x_in - (1 - s) * x0) / s - x0

    return model


def _brightness_loss(x0, t):
    return jnp.mean((x0 - 1.0) ** 2)


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_every_sampler_with_cfg_and_with_loss_guidance(name):
    objective = _objective_of(name)
    sampling = objective.make_sampling(SCHEDULE, name, 8, 0.0)
    model = _gaussian_model(objective.name)
    x_T = jax.random.normal(jax.random.key(0), (64, 4, 4, 1))
    key = jax.random.key(1)
    labels = jnp.zeros((64,), jnp.int32)  # class 0: mean 0.4, the null class 0.0

    def run(scale, guide=None):
        model_fn = classifier_free_guidance(model, labels, null_label=NULL, guidance_scale=scale)
        return np.asarray(jax.jit(lambda x: sampling.run(model_fn, x, key, None, loss_guidance=guide))(x_T))

    cond, cfg = run(1.0), run(3.0)
    guided = run(1.0, LossGuidance(_brightness_loss, 2.0))
    assert np.isfinite(cfg).all() and np.isfinite(guided).all()
    # The conditional samples have their class's mean; CFG extrapolates away from the null class's mean.
    assert abs(cond.mean() - 0.4) < 0.1, cond.mean()
    assert cfg.mean() > cond.mean() + 0.2, (cond.mean(), cfg.mean())
    # Loss guidance pulls towards brightness 1.
    assert guided.mean() > cond.mean() + 0.1, (cond.mean(), guided.mean())


def test_from_scratch_sampler_with_loss_guidance():
    sampling = objectives.get_objective("from_scratch").make_sampling({}, "", 5, 0.0)
    x = jax.random.uniform(jax.random.key(0), (16, 4, 4, 1))
    model_fn = lambda x, t: 0.5 * x  # noqa: E731
    plain = np.asarray(sampling.run(model_fn, x, None, None))
    guided = np.asarray(
        sampling.run(model_fn, x, None, None, loss_guidance=LossGuidance(_brightness_loss, 5.0))
    )
    assert guided.mean() > plain.mean() + 0.1, (plain.mean(), guided.mean())


def test_loss_guidance_per_image_does_not_depend_on_the_batch():
    sampling = _objective_of("ddim").make_sampling(SCHEDULE, "ddim", 4, 0.0)
    model = _gaussian_model("ddpm")
    x_T = jax.random.normal(jax.random.key(0), (6, 4, 4, 1))
    guide = LossGuidance(_brightness_loss, 2.0)

    def run(x):
        fn = lambda x_t, t: model(x_t, t, jnp.zeros(x_t.shape[:1], jnp.int32))  # noqa: E731
        return np.asarray(sampling.run(fn, x, None, None, loss_guidance=guide))

    np.testing.assert_allclose(run(x_T)[:2], run(x_T[:2]), rtol=1e-5, atol=1e-5)


# -- make_sample_fn: labels, guidance, bad input ----------------------------------------------------------

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8,),
    norm_num_groups=4,
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    add_attention=False,
    num_class_embeds=4,  # 3 classes and the null label 3
)


@pytest.fixture(scope="module")
def tiny():
    apply_fn, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    mesh = make_mesh()
    replicated = jax.tree.map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), params
    )
    sampling = objectives.get_objective("ddpm").make_sampling({}, "ddim", 3, 0.0)
    kw = dict(image_shape=(8, 8, 1), mesh=mesh, param_sharding=replicated, batch_size=4, num_classes=3)
    return apply_fn, params, sampling, kw


def test_guidance_scale_one_is_the_unguided_path_and_labels_cycle(tiny):
    apply_fn, params, sampling, kw = tiny
    key = jax.random.key(0)
    plain = make_sample_fn(apply_fn, sampling, **kw)
    off = make_sample_fn(apply_fn, sampling, guidance_scale=1.0, guidance_rescale=0.5, null_label=3, **kw)
    every = make_sample_fn(apply_fn, sampling, class_labels="all", **kw)
    for i in (0, 1):
        ref = np.asarray(plain.fn(params, key, i))
        np.testing.assert_array_equal(np.asarray(off.fn(params, key, i)), ref)
        # batch_size == padded batch: "all" is the default cycling.
        np.testing.assert_array_equal(np.asarray(every.fn(params, key, i)), ref)
    np.testing.assert_array_equal(plain.image_labels(6), [0, 1, 2, 0, 1, 2])
    guided = make_sample_fn(apply_fn, sampling, guidance_scale=3.0, null_label=3, class_labels=[2, 0], **kw)
    assert not np.allclose(np.asarray(guided.fn(params, key, 0)), np.asarray(plain.fn(params, key, 0)))
    np.testing.assert_array_equal(guided.image_labels(5), [2, 0, 2, 0, 2])


def test_class_labels_follow_the_global_image_index(tiny):
    apply_fn, params, sampling, kw = tiny
    seen = []

    def spy(params, x, t, class_labels=None, **extra):
        jax.debug.callback(lambda y: seen.append(np.asarray(y)), class_labels)
        return apply_fn(params, x, t, class_labels, **extra)

    fn = make_sample_fn(spy, sampling, **{**kw, "batch_size": 3}, class_labels=[0, 1])
    fn.fn(params, jax.random.key(0), 1)  # images 3, 4, 5 (and one padding row)
    jax.effects_barrier()
    np.testing.assert_array_equal(seen[0][:3], [1, 0, 1])
    np.testing.assert_array_equal(fn.image_labels(6), [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"class_labels": [0, 5]}, ["class label 5", "0..2"]),
        ({"class_labels": "0,x"}, ["class_labels='0,x'"]),
        ({"num_classes": None, "class_labels": [0]}, ["unconditional"]),
        ({"guidance_scale": 3.0}, ["guidance_scale=3", "null class"]),
        ({"num_classes": None, "guidance_scale": 2.0}, ["guidance_scale=2", "unconditional"]),
        ({"guidance_scale": -1.0, "null_label": 3}, ["guidance_scale=-1.0", ">= 0"]),
        (
            {"guidance_scale": 2.0, "null_label": 3, "guidance_rescale": 1.5},
            ["guidance_rescale=1.5", "[0, 1]"],
        ),
    ],
)
def test_bad_guidance_input_is_one_line(tiny, kwargs, fragments):
    apply_fn, params, sampling, kw = tiny
    with pytest.raises(UserError) as err:
        make_sample_fn(apply_fn, sampling, **{**kw, **kwargs})
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_parse_class_labels():
    assert parse_class_labels("all", 3) == (0, 1, 2)
    assert parse_class_labels(" 2, 0 ", 3) == (2, 0)
    assert parse_class_labels(None, None) is None
    with pytest.raises(UserError, match=r"class label -1 .* 0\.\.9"):
        parse_class_labels("-1", 10)
