"""The parametrisation interface (``jaxdiff.denoisers``) and the objective registry.

- DDPM through the generic loss is ``losses.make_diffusion_loss`` bit for bit (values and gradients);
- every parametrisation's coefficients and target agree: ``c_skip x_t + c_out target = x0``;
- EDM: its loss is the paper's ``lambda(sigma) ||D - x0||^2`` (``EDMPrecond`` / ``EDMLoss``), its
  coefficients are diffusers' ``EDMEulerScheduler``'s, its noise levels log-normal;
- flow: ``x_s`` is ``FlowMatchEulerDiscreteScheduler.scale_noise``'s, the times' shift is the scheduler's;
- each objective accepts its own samplers and refuses the others' with one line.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from jaxdiff import corruption, denoisers, losses, objectives, schedules
from jaxdiff.errors import UserError
from jaxdiff.run_config import DiffusionOptions, default_config, parse_run_config

SHAPE = (6, 4, 4, 2)


def toy_apply(params, x, t, class_labels=None, key=None):
    """A differentiable stand-in network: depends on the input, the time input and the params."""
    out = params["w"] * x + params["b"] * jnp.sin(jnp.asarray(t, jnp.float32))[:, None, None, None]
    if key is not None:
        out = out * jax.random.bernoulli(key, 0.9, x.shape) / 0.9
    return out


PARAMS = {"w": jnp.float32(0.7), "b": jnp.float32(-0.3)}


def _x0():
    return jax.random.uniform(jax.random.PRNGKey(1), SHAPE, jnp.float32, -1, 1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_ddpm_through_the_interface_is_bitwise_make_diffusion_loss(prediction_type, weighting):
    schedule = schedules.make_schedule(beta_schedule="squaredcos_cap_v2")
    old = losses.make_diffusion_loss(schedule, prediction_type, weighting, snr_gamma=5.0)
    diffusion = {
        "objective": "ddpm",
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": prediction_type,
        "loss_weighting": weighting,
        "snr_gamma": 5.0,
    }
    new = objectives.get_objective("ddpm").make_loss(diffusion)
    key = jax.random.PRNGKey(3)

    def value_and_grad(loss):
        return jax.jit(jax.value_and_grad(lambda p: loss(toy_apply, p, _x0(), key), has_aux=True))(PARAMS)

    (old_loss, old_aux), old_grads = value_and_grad(old)
    (new_loss, new_aux), new_grads = value_and_grad(new)
    np.testing.assert_array_equal(new_loss, old_loss)
    for name in old_aux:
        np.testing.assert_array_equal(new_aux[name], old_aux[name])
    for name in PARAMS:
        np.testing.assert_array_equal(new_grads[name], old_grads[name])


PARAMETRIZATIONS = {
    "ddpm-epsilon": denoisers.DDPMParametrization(schedules.make_schedule(), "epsilon"),
    "ddpm-sample": denoisers.DDPMParametrization(schedules.make_schedule(), "sample"),
    "ddpm-v": denoisers.DDPMParametrization(schedules.make_schedule(), "v_prediction"),
    "edm": denoisers.EDMParametrization(sigma_data=0.6),
    "edm-v": denoisers.EDMParametrization(prediction_type="v_prediction"),
    "flow-uniform": denoisers.FlowParametrization(time_sampling="uniform", shift=3.0),
    "flow-logit": denoisers.FlowParametrization(),
    "from_scratch": denoisers.FromScratchParametrization(),
}


@pytest.mark.parametrize("name", PARAMETRIZATIONS)
def test_the_target_through_the_preconditioning_is_the_clean_image(name):
    p = PARAMETRIZATIONS[name]
    k_level, k_noise = jax.random.split(jax.random.PRNGKey(0))
    x0 = _x0()
    level = p.sample_levels(k_level, SHAPE[0])
    noise = p.draw_noise(k_noise, SHAPE, jnp.float32)
    x_t = p.add_noise(x0, noise, level)
    target = p.training_target(x0, noise, level, x_t)
    # A network that outputs its target makes the denoiser exact.
    denoised, out = denoisers.denoise(p, lambda x_in, t: target, x_t, level)
    np.testing.assert_allclose(denoised, x0, atol=2e-4 * (1 + float(jnp.max(jnp.abs(x_t)))))
    np.testing.assert_array_equal(out, target)


def test_edm_loss_is_the_papers_denoiser_space_loss():
    p = denoisers.EDMParametrization(sigma_data=0.5, p_mean=-1.2, p_std=1.2)
    loss_fn = denoisers.make_loss(p)
    x0, key = _x0(), jax.random.PRNGKey(5)
    deterministic = lambda params, x, t, class_labels=None, key=None: toy_apply(params, x, t)  # noqa: E731
    loss, aux = loss_fn(deterministic, PARAMS, x0, key)
    draws, _ = loss_fn.draw(key, x0)
    sigma = np.asarray(draws["t"], np.float64)
    y, n = np.asarray(x0, np.float64), np.asarray(draws["noise"], np.float64)
    # EDMPrecond and EDMLoss (Karras et al. 2022, Table 1), in float64.
    sd, s4 = 0.5, sigma[:, None, None, None]
    x = y + s4 * n
    c_skip = sd**2 / (s4**2 + sd**2)
    c_out = s4 * sd / np.sqrt(s4**2 + sd**2)
    c_in = 1 / np.sqrt(s4**2 + sd**2)
    c_noise = np.log(sigma) / 4
    f = 0.7 * c_in * x - 0.3 * np.sin(c_noise)[:, None, None, None]
    d = c_skip * x + c_out * f
    weight = (s4**2 + sd**2) / (s4 * sd) ** 2
    expected = np.mean(weight * (d - y) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(p.loss_weight(draws["t"]), 1.0, rtol=1e-5)  # lambda c_out^2 = 1
    assert aux["timesteps"].dtype == jnp.float32


def test_edm_noise_levels_are_log_normal():
    p = denoisers.EDMParametrization(p_mean=-1.2, p_std=1.2)
    log_sigma = np.log(np.asarray(p.sample_levels(jax.random.PRNGKey(0), 20000)))
    assert abs(log_sigma.mean() + 1.2) < 0.04 and abs(log_sigma.std() - 1.2) < 0.04


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_edm_preconditioning_is_diffusers_edm_euler_schedulers(prediction_type):
    scheduler = EDMEulerScheduler(sigma_data=0.7, prediction_type=prediction_type)
    sigma = np.array([0.002, 0.1, 1.0, 13.0, 80.0], np.float32)
    x = np.random.RandomState(0).randn(5, 3).astype(np.float32)
    f = np.random.RandomState(1).randn(5, 3).astype(np.float32)
    c = denoisers.edm_preconditioning(jnp.asarray(sigma), 0.7, prediction_type)
    s_t = torch.from_numpy(sigma)[:, None]
    x_t, f_t = torch.from_numpy(x), torch.from_numpy(f)
    np.testing.assert_allclose(
        np.asarray(c.c_in)[:, None] * x, scheduler.precondition_inputs(x_t, s_t).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        c.c_noise, scheduler.precondition_noise(torch.from_numpy(sigma)).numpy(), rtol=1e-6
    )
    denoised = np.asarray(c.c_skip)[:, None] * x + np.asarray(c.c_out)[:, None] * f
    want = scheduler.precondition_outputs(x_t, f_t, s_t).numpy()
    np.testing.assert_allclose(denoised, want, rtol=1e-5, atol=1e-6)


def test_flow_noising_is_the_schedulers_scale_noise_and_the_time_input_its_timesteps():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(7)
    p = denoisers.FlowParametrization(num_train_timesteps=1000, shift=3.0)
    rng = np.random.RandomState(0)
    x0, noise = rng.randn(7, 4, 4, 1).astype(np.float32), rng.randn(7, 4, 4, 1).astype(np.float32)
    sigmas = scheduler.sigmas[:-1].numpy()
    ours = p.add_noise(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(sigmas))
    # diffusers' scale_noise takes NCHW and one timestep per call.
    for i, t in enumerate(scheduler.timesteps):
        want = scheduler.scale_noise(
            torch.from_numpy(x0[i : i + 1]).permute(0, 3, 1, 2),
            t[None],
            torch.from_numpy(noise[i : i + 1]).permute(0, 3, 1, 2),
        )
        np.testing.assert_allclose(ours[i], want.permute(0, 2, 3, 1).numpy()[0], rtol=1e-5, atol=1e-6)
    _, t_in = p.network_input(jnp.zeros((7, 4, 4, 1)), jnp.asarray(sigmas))
    np.testing.assert_allclose(t_in, scheduler.timesteps.numpy(), rtol=1e-6)


def test_flow_times_uniform_logit_normal_and_shift():
    key = jax.random.PRNGKey(0)
    uniform = np.asarray(denoisers.FlowParametrization(time_sampling="uniform").sample_levels(key, 20000))
    assert 0 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    logit = np.asarray(denoisers.FlowParametrization(logit_mean=0.5, logit_std=0.8).sample_levels(key, 20000))
    z = np.log(logit / (1 - logit))
    assert abs(z.mean() - 0.5) < 0.03 and abs(z.std() - 0.8) < 0.03
    shifted = np.asarray(
        denoisers.FlowParametrization(time_sampling="uniform", shift=3.0).sample_levels(key, 20000)
    )
    np.testing.assert_allclose(shifted, 3 * uniform / (1 + 2 * uniform), rtol=1e-5)


def test_from_scratch_objective_keeps_the_course_loss():
    x0, key = _x0(), jax.random.PRNGKey(2)
    from_registry = objectives.get_objective("from_scratch").make_loss({})
    want = corruption.make_from_scratch_loss()(toy_apply, PARAMS, x0, key)[0]
    np.testing.assert_array_equal(from_registry(toy_apply, PARAMS, x0, key)[0], want)


# -- the registry: samplers per objective, config keys ---------------------------------------------------


def _config(objective, sampler, **diffusion):
    config = default_config()
    config.diffusion.objective = objective
    config.sample.sampler = sampler
    config.sample.num_inference_steps = 4
    for key, value in diffusion.items():
        config.diffusion[key] = value
    return config


@pytest.mark.parametrize(
    "objective, sampler",
    [("ddpm", "ddim"), ("ddpm", "unipc"), ("edm", "edm"), ("edm", "edm_heun"), ("flow", "flow_euler")],
)
def test_each_objective_takes_its_samplers(objective, sampler):
    run = parse_run_config(_config(objective, sampler))
    assert run.objective.name == objective
    sampling = run.objective.make_sampling(run.diffusion.to_dict(), run.sample.sampler, 4, 0.0)
    assert sampling.scheduler["_class_name"] in {
        "ddim": "DDIMScheduler",
        "unipc": "UniPCMultistepScheduler",
        "edm": "EDMStochasticSampler",
        "flow_euler": "FlowMatchEulerDiscreteScheduler",
    }.get(run.sample.sampler, "")


@pytest.mark.parametrize(
    "objective, sampler",
    [("ddpm", "flow_euler"), ("ddpm", "edm"), ("edm", "ddim"), ("edm", "flow_euler"), ("flow", "euler")],
)
def test_an_objective_refuses_other_objectives_samplers_in_one_line(objective, sampler):
    with pytest.raises(UserError) as e:
        parse_run_config(_config(objective, sampler))
    message = str(e.value)
    assert "\n" not in message
    assert (
        f"sample.sampler={sampler!r} cannot sample a model trained with diffusion.objective={objective!r}"
        in message
    )


@pytest.mark.parametrize(
    "objective, key, value",
    [
        ("edm", "sigma_data", 0.0),
        ("edm", "sigma_max", 0.001),
        ("edm", "sigma_min", -1.0),
        ("edm", "p_std", -1.0),
        ("edm", "s_tmax", -1.0),
        ("edm", "prediction_type", "sample"),
        ("flow", "time_sampling", "beta"),
        ("flow", "shift", 0.0),
        ("flow", "prediction_type", "v_prediction"),
    ],
)
def test_bad_objective_keys_are_refused_by_name(objective, key, value):
    sampler = {"edm": "edm", "flow": "flow_euler"}[objective]
    with pytest.raises(UserError, match=f"diffusion.{key}="):
        parse_run_config(_config(objective, sampler, **{key: value}))


def test_diffusion_option_defaults_are_the_objectives_defaults():
    options = DiffusionOptions()
    for key, value in {**objectives.EDM_DEFAULTS, **objectives.FLOW_DEFAULTS}.items():
        assert getattr(options, key) == value, key
    edm = denoisers.EDMParametrization()
    assert (edm.sigma_data, edm.p_mean, edm.p_std) == (options.sigma_data, options.p_mean, options.p_std)
    assert math.isinf(options.s_tmax)
