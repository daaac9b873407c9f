"""Samplers against diffusers' schedulers (torch, CPU), on a smooth test model and on Gaussian data."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.samplers import (
    Sampler,
    ddim,
    ddpm,
    dpm_solver,
    euler,
    from_diffusers_config,
    recorded_steps,
    resolve_sampler,
    sample,
    sampler_names,
    scheduler_config_for,
    step_noise,
)
from jaxdiff.schedules import make_schedule
from tests._sampler_peers import assert_rel_close, diffusers_scheduler, jax_model, run_diffusers

DDPM, DDIM, DPM, EULER = (m.CLASS_NAME for m in (ddpm, ddim, dpm_solver, euler))

# (config, num_inference_steps, pipeline-call options). Together they cover every implemented option.
PARITY_CASES = [
    ({"_class_name": DDPM}, 12, {}),
    ({"_class_name": DDPM, "timestep_spacing": "trailing", "variance_type": "fixed_large",
      "prediction_type": "v_prediction"}, 12, {}),
    ({"_class_name": DDPM, "timestep_spacing": "linspace", "variance_type": "fixed_small_log",
      "prediction_type": "sample", "clip_sample_range": 0.6}, 12, {}),
    ({"_class_name": DDPM, "steps_offset": 1, "thresholding": True, "dynamic_thresholding_ratio": 0.9,
      "sample_max_value": 1.5, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
     12, {}),
    ({"_class_name": DDPM, "beta_schedule": "sigmoid", "clip_sample": False, "num_train_timesteps": 500},
     12, {}),
    ({"_class_name": DDPM, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
      "timestep_spacing": "trailing"}, 12, {}),
    ({"_class_name": DDIM}, 12, {}),
    ({"_class_name": DDIM, "steps_offset": 1, "set_alpha_to_one": False}, 12, {"eta": 0.5}),
    ({"_class_name": DDIM, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
      "rescale_betas_zero_snr": True}, 12, {"eta": 1.0, "use_clipped_model_output": True}),
    ({"_class_name": DDIM, "timestep_spacing": "linspace", "prediction_type": "sample", "thresholding": True,
      "sample_max_value": 2.0}, 12, {"eta": 0.3}),
    ({"_class_name": DDIM, "beta_schedule": "squaredcos_cap_v2", "clip_sample": False}, 12,
     {"use_clipped_model_output": True}),
    ({"_class_name": DPM}, 12, {}),
    ({"_class_name": DPM, "solver_order": 1, "timestep_spacing": "leading", "steps_offset": 1}, 12, {}),
    ({"_class_name": DPM, "solver_type": "heun", "final_sigmas_type": "sigma_min",
      "lower_order_final": False}, 12, {}),
    ({"_class_name": DPM, "solver_order": 3, "use_karras_sigmas": True}, 20, {}),
    ({"_class_name": DPM, "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 20, {}),
    ({"_class_name": DPM, "euler_at_final": True, "final_sigmas_type": "sigma_min",
      "prediction_type": "sample", "thresholding": True, "dynamic_thresholding_ratio": 0.9}, 12, {}),
    ({"_class_name": DPM, "use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2",
      "lambda_min_clipped": -5.1, "timestep_spacing": "trailing"}, 12, {}),
    ({"_class_name": DPM, "use_exponential_sigmas": True, "rescale_betas_zero_snr": True,
      "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 12, {}),
    ({"_class_name": EULER}, 12, {}),
    ({"_class_name": EULER, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 12, {}),
    ({"_class_name": EULER, "timestep_spacing": "leading", "steps_offset": 1}, 12, {}),
    ({"_class_name": EULER, "timestep_spacing": "trailing", "prediction_type": "original_sample"}, 12, {}),
    ({"_class_name": EULER, "interpolation_type": "log_linear"}, 12, {}),
    ({"_class_name": EULER, "use_exponential_sigmas": True, "timestep_type": "continuous",
      "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}, 12, {}),
    ({"_class_name": EULER, "use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 40.0,
      "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "rescale_betas_zero_snr": True}, 12, {}),
]  # fmt: skip


def _case_id(case):
    config, n, call = case
    parts = [config["_class_name"].replace("Scheduler", "")] + [
        f"{k}={v}" for k, v in {**config, **call}.items() if k != "_class_name"
    ]
    return f"{'-'.join(parts)}-n={n}"


@jax.jit
def _jit_sample_all_steps(sampler, x_T, key):
    return sample(sampler, jax_model, x_T, key, intermediates_every=1)


@pytest.mark.parametrize("case", PARITY_CASES, ids=_case_id)
def test_trajectory_matches_diffusers(case):
    config, n, call = case
    sampler = from_diffusers_config(config, n, **call)
    x_T = np.random.default_rng(5).standard_normal((2, 4, 4, 3)).astype(np.float32)
    key = jax.random.key(11)
    x0, record = _jit_sample_all_steps(sampler, jnp.asarray(x_T), key)
    ref_x0, ref_xs, ref_pred_x0s = run_diffusers(config, n, x_T, key if sampler.stochastic else None, call)

    ref_timesteps = diffusers_scheduler(config)
    ref_timesteps.set_timesteps(n)
    ref_timesteps = ref_timesteps.timesteps.numpy()
    if config["_class_name"] == EULER and ref_timesteps.dtype.kind == "f":
        # Fractional (sigma-interpolated) timesteps: equal up to float32 rounding of the schedule.
        np.testing.assert_allclose(np.asarray(sampler.timesteps), ref_timesteps, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(np.asarray(sampler.timesteps), ref_timesteps)
    assert x0.dtype == jnp.float32 and x0.shape == x_T.shape
    for i in range(len(ref_timesteps)):
        assert_rel_close(record["x_t"][i], ref_xs[i], 1e-5, f"x_t at step {i}")
        assert_rel_close(record["pred_x0"][i], ref_pred_x0s[i], 1e-5, f"pred_x0 at step {i}")
    assert_rel_close(x0, ref_x0, 1e-5, "x0")


# -- timesteps --------------------------------------------------------------------------------------
TIMESTEP_CASES = [
    ({"_class_name": cls, "timestep_spacing": spacing, "steps_offset": offset}, n)
    for cls in (DDPM, DDIM, DPM, EULER)
    for spacing in ("leading", "trailing", "linspace")
    for offset in (0, 1)
    for n in (1, 3, 7, 10, 33, 50, 250)
    if not (offset and spacing != "leading")
] + [
    ({"_class_name": DPM, "use_karras_sigmas": True}, 25),
    ({"_class_name": DPM, "use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"_class_name": DPM, "use_lu_lambdas": True}, 25),
    ({"_class_name": DPM, "use_exponential_sigmas": True}, 25),
    ({"_class_name": DPM, "lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"_class_name": DPM, "timestep_spacing": "trailing", "lambda_min_clipped": -4.0}, 25),
    ({"_class_name": DDIM, "num_train_timesteps": 100}, 100),
    ({"_class_name": DDPM, "num_train_timesteps": 77, "timestep_spacing": "trailing"}, 9),
]


@pytest.mark.parametrize("case", TIMESTEP_CASES, ids=lambda c: f"{_case_id((c[0], c[1], {}))}")
def test_timesteps_equal_diffusers(case):
    config, n = case
    sampler = from_diffusers_config(config, n)
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(n)
    ours, theirs = np.asarray(sampler.timesteps), scheduler.timesteps.numpy()
    assert ours.dtype == (np.float32 if config["_class_name"] == EULER else np.int32)
    np.testing.assert_array_equal(ours, theirs)
    assert sampler.num_steps == len(theirs)
    assert float(sampler.init_noise_sigma) == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-6)
    if "sigmas" in sampler.tables:
        np.testing.assert_allclose(np.asarray(sampler.tables["sigmas"]), scheduler.sigmas.numpy(), rtol=2e-6)


# -- the denoising distribution ---------------------------------------------------------------------
GAUSS_MEAN = np.array([0.5, -0.3, 0.0], np.float32)
GAUSS_STD = np.array([0.5, 0.8, 1.0], np.float32)


def _gaussian_eps_model(schedule):
    """The exact noise predictor E[eps | x_t] for x0 ~ N(GAUSS_MEAN, GAUSS_STD^2) per channel.

    ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps`` gives ``E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) /
    (ab s^2 + 1 - ab)``; ``ab`` at fractional t (Euler) comes from sigma interpolated as diffusers does.
    """
    sigmas = jnp.sqrt((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
    mu, s = jnp.asarray(GAUSS_MEAN), jnp.asarray(GAUSS_STD)

    def model_fn(x, t):
        sigma = jnp.interp(t.astype(jnp.float32), jnp.arange(sigmas.shape[0], dtype=jnp.float32), sigmas)
        ab = (1 / (1 + sigma**2))[:, None, None, None]
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mu) / (ab * s**2 + 1 - ab)

    return model_fn


@pytest.mark.parametrize(
    "config, n",
    [
        ({"_class_name": DDPM, "clip_sample": False}, 1000),
        ({"_class_name": DDIM, "clip_sample": False}, 200),
        ({"_class_name": DPM}, 50),
        ({"_class_name": EULER}, 200),
    ],
    ids=lambda v: v["_class_name"] if isinstance(v, dict) else str(v),
)
def test_exact_predictor_recovers_gaussian_data(config, n):
    model_fn = _gaussian_eps_model(make_schedule())
    sampler = from_diffusers_config(config, n)
    x_T = jax.random.normal(jax.random.key(0), (4096, 2, 2, 3))
    x0 = jax.jit(lambda s, x, k: sample(s, model_fn, x, k))(sampler, x_T, jax.random.key(1))
    x0 = np.asarray(x0).reshape(-1, 3)  # 16384 independent draws per channel
    # Standard errors are ~0.008 s (mean) and ~0.6% (std); discretisation costs these step counts < 1.5%.
    np.testing.assert_allclose(x0.mean(0), GAUSS_MEAN, atol=0.03)
    np.testing.assert_allclose(x0.std(0) / GAUSS_STD, 1.0, atol=0.03)


# -- jit, vmap, devices, intermediates --------------------------------------------------------------
def test_vmap_eager_and_closure_agree():
    sampler = from_diffusers_config({"_class_name": DDPM}, 8)
    xs = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 3))
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(lambda x, k: sample(sampler, jax_model, x, k)))(xs, keys)
    one_group = jax.jit(lambda x, k: sample(sampler, jax_model, x, k))  # sampler closed over
    for g in range(3):
        np.testing.assert_allclose(np.asarray(batched[g]), np.asarray(one_group(xs[g], keys[g])), atol=1e-6)
    eager = sample(sampler, jax_model, xs[0], keys[0])
    np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[0]), atol=1e-6)
    # A stochastic sampler does use its key.
    assert not np.allclose(np.asarray(batched[0]), np.asarray(one_group(xs[0], keys[1])))


def test_intermediates_every_k():
    sampler = from_diffusers_config({"_class_name": DDIM}, 10, eta=0.5)
    x_T, key = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)), jax.random.key(3)
    run = jax.jit(sample, static_argnums=1, static_argnames="intermediates_every")
    full_x0, full = run(sampler, jax_model, x_T, key, intermediates_every=1)
    x0, rec = run(sampler, jax_model, x_T, key, intermediates_every=4)
    steps = recorded_steps(10, 4)
    assert steps.tolist() == [0, 4, 8, 9]
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(full_x0))
    assert rec["x_t"].shape == (4, 2, 4, 4, 3) and rec["pred_x0"].shape == (4, 2, 4, 4, 3)
    np.testing.assert_array_equal(np.asarray(rec["timesteps"]), np.asarray(sampler.timesteps)[steps])
    np.testing.assert_array_equal(np.asarray(rec["x_t"]), np.asarray(full["x_t"])[steps])
    np.testing.assert_array_equal(np.asarray(rec["pred_x0"]), np.asarray(full["pred_x0"])[steps])
    np.testing.assert_array_equal(np.asarray(full["x_t"][0]), np.asarray(x_T))  # init_noise_sigma = 1
    # A deterministic sampler needs no key.
    dpm = from_diffusers_config({"_class_name": DPM}, 8)
    assert np.all(np.isfinite(np.asarray(run(dpm, jax_model, x_T, None))))


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxdiff.samplers import from_diffusers_config, sample

    def model_fn(x, t):
        return 0.8 * x + 0.2 * jnp.tanh(x[..., ::-1] + t[:, None, None, None] / 1000)

    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    run = jax.jit(lambda s, x, k: sample(s, model_fn, x, k, intermediates_every=2))
    for name in ("DDPMScheduler", "DPMSolverMultistepScheduler"):
        sampler = from_diffusers_config({"_class_name": name}, 6)
        x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
        ref, ref_rec = run(sampler, jax.device_put(x_T, jax.devices()[0]), jax.random.key(1))
        x_sharded = jax.device_put(x_T, NamedSharding(mesh, P("data")))
        out, rec = run(sampler, x_sharded, jax.random.key(1))
        assert len(out.sharding.device_set) == 4, out.sharding
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(rec["x_t"]), np.asarray(ref_rec["x_t"]), rtol=1e-6, atol=1e-6)
    print("ok")
    """
)


def test_sharded_batch_on_four_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# -- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [ddpm, ddim, dpm_solver, euler], ids=lambda m: m.CLASS_NAME)
def test_defaults_table_is_diffusers_signature(module):
    params = inspect.signature(getattr(diffusers, module.CLASS_NAME).__init__).parameters
    real = {k: p.default for k, p in params.items() if k != "self"}
    assert module.DEFAULTS == real
    # A whole saved config (with _class_name, _diffusers_version) is accepted as is.
    scheduler = getattr(diffusers, module.CLASS_NAME)()
    saved = json.loads(scheduler.to_json_string())
    assert saved["_class_name"] == module.CLASS_NAME and "_diffusers_version" in saved
    sampler = from_diffusers_config(saved, 10)
    scheduler.set_timesteps(10)
    np.testing.assert_array_equal(np.asarray(sampler.timesteps), scheduler.timesteps.numpy())


@pytest.mark.parametrize(
    "config, overrides, needle",
    [
        ({"_class_name": "PNDMScheduler"}, {}, "_class_name='PNDMScheduler' is not one of"),
        ({}, {}, "_class_name=None"),
        (
            {"_class_name": DDIM, "skip_prk_steps": True},
            {},
            "unknown DDIMScheduler config key 'skip_prk_steps'",
        ),
        ({"_class_name": DDPM}, {"eta": 0.5}, "unknown DDPMScheduler config key 'eta'"),
        (
            {"_class_name": DPM, "algorithm_type": "sde-dpmsolver"},
            {},
            "algorithm_type='sde-dpmsolver' is not",
        ),
        ({"_class_name": DPM}, {"use_beta_sigmas": True}, "use_beta_sigmas=True is not implemented"),
        (
            {"_class_name": DPM, "variance_type": "learned_range"},
            {},
            "variance_type='learned_range' is not impl",
        ),
        ({"_class_name": EULER}, {"s_churn": 1.0}, "s_churn=1.0 is not implemented"),
        ({"_class_name": DDPM, "variance_type": "learned"}, {}, "variance_type='learned' is not one of"),
        (
            {"_class_name": DDPM, "timestep_spacing": "uniform"},
            {},
            "timestep_spacing='uniform' is not one of",
        ),
        ({"_class_name": DDIM, "prediction_type": "flow"}, {}, "prediction_type='flow' is not one of"),
        ({"_class_name": DDIM}, {"eta": 1.5}, "eta=1.5 must be between 0 and 1"),
        ({"_class_name": DPM, "solver_order": 4}, {}, "solver_order=4 is not one of"),
        ({"_class_name": DDIM, "beta_schedule": "cosine"}, {}, "beta_schedule='cosine' is not one of"),
        (
            {"_class_name": DDIM, "steps_offset": 5},
            {"num_inference_steps": 1000},
            "timestep 1004 falls outside",
        ),
    ],
)
def test_bad_configs_raise_user_error(config, overrides, needle):
    overrides = dict(overrides)
    n = overrides.pop("num_inference_steps", 10)
    with pytest.raises(UserError, match=needle) as info:
        from_diffusers_config(config, n, **overrides)
    assert "\n" not in str(info.value)


def test_num_steps_and_key_errors():
    with pytest.raises(UserError, match="num_inference_steps=1001 must be at least 1 and at most"):
        from_diffusers_config({"_class_name": DDPM}, 1001)
    with pytest.raises(UserError, match="num_inference_steps=0"):
        from_diffusers_config({"_class_name": EULER}, 0)
    sampler = from_diffusers_config({"_class_name": DDPM}, 5)
    with pytest.raises(UserError, match="stochastic: pass a PRNG key"):
        sample(sampler, jax_model, jnp.zeros((1, 2, 2, 3)), None)
    with pytest.raises(UserError, match="intermediates_every=0"):
        sample(sampler, jax_model, jnp.zeros((1, 2, 2, 3)), jax.random.key(0), intermediates_every=0)


def test_scheduler_config_for_names():
    train = {
        "num_train_timesteps": 500,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": False,
        "objective": "ddpm",
        "snr_gamma": 5.0,
    }
    # Every name of the samplers of the VP noise schedule (the others take no beta schedule).
    vp_names = [
        name
        for entry in map(resolve_sampler, sampler_names())
        if {"beta_schedule", "rescale_betas_zero_snr"} <= entry.config_keys and not entry.options
        for name in (entry.name, *entry.aliases, entry.class_name)
    ]
    assert {"ddpm", "ddim", "dpm++", "dpmsolver++", "dpm-solver++", "euler"} <= set(vp_names)
    for name in vp_names:
        class_name = resolve_sampler(name).class_name
        config = scheduler_config_for(name, train)
        assert config == {
            "_class_name": class_name,
            "num_train_timesteps": 500,
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": False,
        }
        sampler = from_diffusers_config(config, 10)
        scheduler = diffusers_scheduler(config)  # diffusers takes it too
        scheduler.set_timesteps(10)
        np.testing.assert_array_equal(np.asarray(sampler.timesteps), scheduler.timesteps.numpy())
    ddim_config = scheduler_config_for("ddim", train, eta=0.5, timestep_spacing="trailing")
    assert from_diffusers_config(ddim_config, 10).options.eta == 0.5
    assert scheduler_config_for(EULER)["_class_name"] == EULER
    with pytest.raises(UserError, match="sampler 'pndm' is not one of ddpm, ddim, dpm\\+\\+"):
        scheduler_config_for("pndm", train)


def test_sampler_is_a_pytree_and_step_noise_is_documented():
    sampler = from_diffusers_config({"_class_name": DPM}, 7)
    leaves, treedef = jax.tree.flatten(sampler)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert (
        isinstance(rebuilt, Sampler) and rebuilt.options == sampler.options and rebuilt.kind == "dpmsolver++"
    )
    key = jax.random.key(4)
    expected = jax.random.normal(jax.random.fold_in(key, 3), (2, 3))
    np.testing.assert_array_equal(np.asarray(step_noise(key, 3, (2, 3))), np.asarray(expected))
