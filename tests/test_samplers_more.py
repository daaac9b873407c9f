"""The samplers of issue 20 (Heun, Euler ancestral, UniPC, DPM-Solver++ SDE) against diffusers' schedulers
(torch, CPU) on a smooth test model with the same injected noise, and on Gaussian data."""

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
    dpm_solver,
    euler_ancestral,
    flow_match,
    from_diffusers_config,
    heun,
    resolve_sampler,
    sample,
    scheduler_config_for,
    unipc,
)
from jaxdiff.schedules import make_schedule
from tests._sampler_peers import assert_rel_close, diffusers_scheduler, jax_model, run_diffusers

HEUN, EULER_A, UNIPC, DPM, FLOW = (
    m.CLASS_NAME for m in (heun, euler_ancestral, unipc, dpm_solver, flow_match)
)
SDE = {"_class_name": DPM, "algorithm_type": "sde-dpmsolver++"}
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}

# (config, num_inference_steps). Together they cover every implemented option.
PARITY_CASES = [
    ({"_class_name": HEUN}, 6),
    ({"_class_name": HEUN, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 6),
    ({"_class_name": HEUN, "use_exponential_sigmas": True, "prediction_type": "sample", "clip_sample": True,
      "clip_sample_range": 0.8}, 6),
    ({"_class_name": HEUN, "timestep_spacing": "leading", "steps_offset": 1, **SD_BETAS}, 6),
    ({"_class_name": HEUN, "timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2"}, 5),
    ({"_class_name": EULER_A}, 8),
    ({"_class_name": EULER_A, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
      "rescale_betas_zero_snr": True}, 8),
    ({"_class_name": EULER_A, "timestep_spacing": "leading", "steps_offset": 1, **SD_BETAS}, 8),
    ({"_class_name": UNIPC}, 8),
    ({"_class_name": UNIPC, "solver_order": 1}, 8),
    ({"_class_name": UNIPC, "solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
     8),
    ({"_class_name": UNIPC, "solver_order": 3, "use_karras_sigmas": True}, 10),
    ({"_class_name": UNIPC, "solver_type": "bh1", "final_sigmas_type": "sigma_min", "solver_order": 3}, 8),
    ({"_class_name": UNIPC, "predict_x0": False, "final_sigmas_type": "sigma_min", "solver_type": "bh1",
      "timestep_spacing": "trailing"}, 8),
    ({"_class_name": UNIPC, "predict_x0": False, "final_sigmas_type": "sigma_min", "solver_order": 3,
      "prediction_type": "sample"}, 8),
    ({"_class_name": UNIPC, "disable_corrector": [0, 2], "timestep_spacing": "leading",
      "steps_offset": 1}, 8),
    ({"_class_name": UNIPC, "use_exponential_sigmas": True, "final_sigmas_type": "sigma_min",
      "solver_type": "midpoint"}, 8),
    ({"_class_name": UNIPC, "use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 20.0,
      "timestep_spacing": "trailing"}, 8),
    ({"_class_name": UNIPC, "prediction_type": "sample", "thresholding": True,
      "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, 8),
    ({"_class_name": UNIPC, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
      "timestep_spacing": "trailing"}, 8),
    ({**SDE, "solver_order": 1}, 8),
    (SDE, 8),
    ({**SDE, "solver_type": "heun", "use_karras_sigmas": True, "lower_order_final": False}, 8),
    ({**SDE, "solver_order": 3, "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"}, 16),
    ({**SDE, "solver_type": "heun", "solver_order": 3, "timestep_spacing": "trailing"}, 8),
    ({"_class_name": FLOW}, 8),
    ({"_class_name": FLOW, "shift": 3.0, "num_train_timesteps": 500}, 8),
    ({"_class_name": FLOW, "shift": 2.5, "stochastic_sampling": True}, 8),
]  # fmt: skip


def _case_id(case):
    config, n = case
    parts = [config["_class_name"].replace("Scheduler", "")] + [
        f"{k}={v}" for k, v in config.items() if k != "_class_name"
    ]
    return f"{'-'.join(parts)}-n={n}"


@jax.jit
def _jit_sample_all_steps(sampler, x_T, key):
    return sample(sampler, jax_model, x_T, key, intermediates_every=1)


@pytest.mark.parametrize("case", PARITY_CASES, ids=_case_id)
def test_trajectory_matches_diffusers(case):
    config, n = case
    sampler = from_diffusers_config(config, n)
    x_T = np.random.default_rng(5).standard_normal((2, 4, 4, 3)).astype(np.float32)
    key = jax.random.key(11)
    x0, record = _jit_sample_all_steps(sampler, jnp.asarray(x_T), key)
    ref_x0, ref_xs, ref_pred_x0s = run_diffusers(config, n, x_T, key if sampler.stochastic else None)

    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(n)
    ref_timesteps = scheduler.timesteps.numpy()
    assert sampler.num_steps == sampler.num_model_evaluations == len(ref_timesteps)
    if ref_timesteps.dtype.kind == "f":
        # Fractional (sigma-interpolated) timesteps: equal up to float32 rounding of the schedule.
        np.testing.assert_allclose(np.asarray(sampler.timesteps), ref_timesteps, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(np.asarray(sampler.timesteps), ref_timesteps)
    np.testing.assert_allclose(np.asarray(sampler.tables["sigmas"]), scheduler.sigmas.numpy(), rtol=2e-6)
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    assert float(sampler.init_noise_sigma) == pytest.approx(init_noise_sigma, rel=1e-6)
    assert x0.dtype == jnp.float32 and x0.shape == x_T.shape
    for i in range(len(ref_timesteps)):
        assert_rel_close(record["x_t"][i], ref_xs[i], 1e-5, f"x_t at step {i}")
        assert_rel_close(record["pred_x0"][i], ref_pred_x0s[i], 1e-5, f"pred_x0 at step {i}")
    assert_rel_close(x0, ref_x0, 1e-5, "x0")


def test_heun_evaluates_the_model_twice_per_step_but_the_last():
    for n in (1, 2, 7):
        sampler = from_diffusers_config({"_class_name": HEUN}, n)
        assert sampler.num_model_evaluations == 2 * n - 1


# -- timesteps --------------------------------------------------------------------------------------
TIMESTEP_CASES = [
    ({"_class_name": cls, "timestep_spacing": spacing, "steps_offset": offset}, n)
    for cls in (HEUN, EULER_A, UNIPC)
    for spacing in ("leading", "trailing", "linspace")
    for offset in (0, 1)
    for n in (1, 3, 10, 33, 250)
    if not (offset and spacing != "leading")
] + [
    ({"_class_name": HEUN, "use_karras_sigmas": True}, 25),
    ({"_class_name": HEUN, "use_exponential_sigmas": True}, 25),
    ({"_class_name": UNIPC, "use_karras_sigmas": True}, 25),
    ({"_class_name": UNIPC, "use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, 25),
    ({"_class_name": UNIPC, "use_exponential_sigmas": True, "sigma_max": 10.0}, 25),
    *[({"_class_name": FLOW, "shift": shift}, n) for shift in (1.0, 3.0) for n in (1, 4, 28, 250)],
]


@pytest.mark.parametrize("case", TIMESTEP_CASES, ids=lambda c: _case_id(c))
def test_timesteps_equal_diffusers(case):
    config, n = case
    sampler = from_diffusers_config(config, n)
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(n)
    ours, theirs = np.asarray(sampler.timesteps), scheduler.timesteps.numpy()
    assert ours.dtype == (np.int32 if config["_class_name"] == UNIPC else np.float32)
    if config.get("use_exponential_sigmas") or config.get("use_karras_sigmas"):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(np.asarray(sampler.tables["sigmas"]), scheduler.sigmas.numpy(), rtol=2e-6)
    init_noise_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    assert float(sampler.init_noise_sigma) == pytest.approx(init_noise_sigma, rel=1e-6)


# -- the denoising distribution ---------------------------------------------------------------------
GAUSS_MEAN = np.array([0.5, -0.3, 0.0], np.float32)
GAUSS_STD = np.array([0.5, 0.8, 1.0], np.float32)


def _gaussian_eps_model(schedule):
    """The exact noise predictor E[eps | x_t] for x0 ~ N(GAUSS_MEAN, GAUSS_STD^2) per channel (see
    tests/test_samplers.py); ``ab`` at fractional t from sigma interpolated as diffusers does."""
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
        ({"_class_name": HEUN, "beta_start": 0.0001, "beta_end": 0.02}, 30),
        ({"_class_name": EULER_A}, 200),
        ({"_class_name": UNIPC}, 50),
        (
            {"_class_name": UNIPC, "solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
            20,
        ),
        (SDE, 100),
    ],
    ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else str(v),
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


def _gaussian_velocity_model(num_train_timesteps=1000):
    """The exact velocity E[noise - x0 | x_s] for ``x_s = (1 - s) x0 + s noise``, x0 ~ N(mu, S^2) per channel:
    ``E[x0 | x] = mu + (1 - s) S^2 (x - (1 - s) mu) / ((1 - s)^2 S^2 + s^2)``, ``E[noise | x] = (x - (1 - s)
    E[x0 | x]) / s``, with ``s = t / num_train_timesteps``."""
    mu, var = jnp.asarray(GAUSS_MEAN), jnp.asarray(GAUSS_STD) ** 2

    def model_fn(x, t):
        s = (t.astype(jnp.float32) / num_train_timesteps)[:, None, None, None]
        x0 = mu + (1 - s) * var * (x - (1 - s) * mu) / ((1 - s) ** 2 * var + s**2)
        return (x - (1 - s) * x0) / s - x0

    return model_fn


# Not stochastic_sampling: re-noising the posterior mean with fresh noise does not keep the marginals
# (it returns a narrower distribution, in diffusers too).
# A shift spends the steps at high noise: more steps for the same accuracy at the data end.
@pytest.mark.parametrize("shift, n", [(1.0, 50), (3.0, 200)])
def test_exact_velocity_recovers_gaussian_data(shift, n):
    sampler = from_diffusers_config({"_class_name": FLOW, "shift": shift}, n)
    x_T = jax.random.normal(jax.random.key(0), (4096, 2, 2, 3))
    x0 = jax.jit(lambda s, x, k: sample(s, _gaussian_velocity_model(), x, k))(sampler, x_T, jax.random.key(1))
    x0 = np.asarray(x0).reshape(-1, 3)
    np.testing.assert_allclose(x0.mean(0), GAUSS_MEAN, atol=0.03)
    np.testing.assert_allclose(x0.std(0) / GAUSS_STD, 1.0, atol=0.03)


# -- jit, vmap, devices -----------------------------------------------------------------------------
NEW_SAMPLERS = ("heun", "euler_a", "unipc", "dpm++sde", "flow_euler")


@pytest.mark.parametrize("name", NEW_SAMPLERS)
def test_vmap_eager_and_jit_agree(name):
    sampler = from_diffusers_config(scheduler_config_for(name), 4)
    xs = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 3))
    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(lambda x, k: sample(sampler, jax_model, x, k)))(xs, keys)
    one_group = jax.jit(lambda x, k: sample(sampler, jax_model, x, k))
    for g in range(3):
        np.testing.assert_allclose(np.asarray(batched[g]), np.asarray(one_group(xs[g], keys[g])), atol=1e-5)
    eager = sample(sampler, jax_model, xs[0], keys[0])
    np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[0]), atol=1e-5)
    # A stochastic sampler does use its key; a deterministic one does not.
    other_key = np.asarray(one_group(xs[0], keys[1]))
    assert np.allclose(np.asarray(batched[0]), other_key) != resolve_sampler(name).stochastic


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxdiff.samplers import from_diffusers_config, sample, scheduler_config_for
    import _sampler_peers

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    run = jax.jit(lambda s, x, k: sample(s, _sampler_peers.jax_model, x, k, intermediates_every=2))
    for name in NAMES:
        sampler = from_diffusers_config(scheduler_config_for(name), 5)
        x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
        ref, ref_rec = run(sampler, jax.device_put(x_T, jax.devices()[0]), jax.random.key(1))
        out, rec = run(sampler, jax.device_put(x_T, NamedSharding(mesh, P("data"))), jax.random.key(1))
        assert len(out.sharding.device_set) == 8, out.sharding
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(rec["x_t"]), np.asarray(ref_rec["x_t"]), rtol=1e-6, atol=1e-6)
    print("ok")
    """
)


def test_sharded_batch_on_eight_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), tests, env.get("PYTHONPATH", "")])
    script = f"NAMES = {NEW_SAMPLERS!r}\n" + _MULTI_DEVICE_SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# -- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [heun, euler_ancestral, unipc, flow_match], ids=lambda m: m.CLASS_NAME)
def test_defaults_table_is_diffusers_signature(module):
    params = inspect.signature(getattr(diffusers, module.CLASS_NAME).__init__).parameters
    real = {k: p.default for k, p in params.items() if k != "self"}
    assert module.DEFAULTS == real
    scheduler = getattr(diffusers, module.CLASS_NAME)()
    saved = json.loads(scheduler.to_json_string())
    assert saved["_class_name"] == module.CLASS_NAME and "_diffusers_version" in saved
    sampler = from_diffusers_config(saved, 10)
    scheduler.set_timesteps(10)
    np.testing.assert_allclose(np.asarray(sampler.timesteps), scheduler.timesteps.numpy(), rtol=1e-6)


def test_short_names():
    train = {"num_train_timesteps": 500, "beta_schedule": "linear", "prediction_type": "v_prediction",
             "rescale_betas_zero_snr": False, "clip_sample": True}  # fmt: skip
    assert scheduler_config_for("heun", train) == {
        "_class_name": HEUN,
        "num_train_timesteps": 500,
        "beta_schedule": "linear",
        "prediction_type": "v_prediction",
    }  # Heun has no rescale_betas_zero_snr key
    assert scheduler_config_for("dpm++2m-sde", train) == scheduler_config_for("dpm++sde", train)
    sde = scheduler_config_for("dpm++sde", train)
    assert sde["algorithm_type"] == "sde-dpmsolver++" and "clip_sample" not in sde
    assert from_diffusers_config(sde, 5).stochastic
    for name, class_name in [("euler_a", EULER_A), ("euler-ancestral", EULER_A), ("unipc", UNIPC)]:
        assert resolve_sampler(name).class_name == class_name
        assert from_diffusers_config(scheduler_config_for(name, train), 5).num_steps == 5


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"_class_name": HEUN, "use_beta_sigmas": True}, "use_beta_sigmas=True is not implemented"),
        ({"_class_name": HEUN, "prediction_type": "flow"}, "prediction_type='flow' is not one of"),
        ({"_class_name": EULER_A, "prediction_type": "sample"}, "prediction_type='sample' is not one of"),
        ({"_class_name": UNIPC, "use_flow_sigmas": True}, "use_flow_sigmas=True is not implemented"),
        ({"_class_name": UNIPC, "solver_p": "DDIM"}, "solver_p='DDIM' is not implemented"),
        ({"_class_name": UNIPC, "solver_order": 4}, "solver_order=4 is not one of"),
        (
            {"_class_name": UNIPC, "solver_type": "bh1"},
            "solver_type='bh1' needs final_sigmas_type='sigma_min'",
        ),
        ({"_class_name": UNIPC, "predict_x0": False}, "predict_x0=False needs final_sigmas_type='sigma_min'"),
        (
            {"_class_name": UNIPC, "lower_order_final": False},
            "lower_order_final=False with solver_order=2 needs",
        ),
        ({"_class_name": UNIPC, "disable_corrector": 3}, "disable_corrector=3 must be a list"),
        (
            {"_class_name": DPM, "algorithm_type": "sde-dpmsolver"},
            "algorithm_type='sde-dpmsolver' is not one",
        ),
    ],
)
def test_bad_configs_raise_user_error(config, needle):
    with pytest.raises(UserError, match=needle) as info:
        from_diffusers_config(config, 10)
    assert "\n" not in str(info.value)
