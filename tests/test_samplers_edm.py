"""The EDM samplers (EDM Euler with churn, EDM DPM-Solver++ ODE and SDE) against diffusers' schedulers (torch,
CPU) on a smooth test model with the same injected noise, and on Gaussian data."""

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
    edm_dpm_solver,
    edm_euler,
    from_diffusers_config,
    resolve_sampler,
    sample,
    sampler_names,
    scheduler_config_for,
)
from tests._sampler_peers import assert_rel_close, diffusers_scheduler, jax_model, run_diffusers

EULER, DPM = edm_euler.CLASS_NAME, edm_dpm_solver.CLASS_NAME
SDE = {"_class_name": DPM, "algorithm_type": "sde-dpmsolver++"}
CHURN = {"s_churn": 4.0, "s_tmin": 0.05, "s_tmax": 20.0, "s_noise": 1.003}  # some steps churn, some not

# (config, num_inference_steps, step() call options). Together they cover every implemented option.
PARITY_CASES = [
    ({"_class_name": EULER}, 8, {}),
    ({"_class_name": EULER}, 1, {}),
    ({"_class_name": EULER, "sigma_schedule": "exponential", "prediction_type": "v_prediction"}, 8, {}),
    ({"_class_name": EULER, "final_sigmas_type": "sigma_min", "rho": 5.0, "sigma_data": 0.3,
      "sigma_min": 0.01, "sigma_max": 40.0}, 8, {}),
    ({"_class_name": EULER}, 8, CHURN),
    ({"_class_name": EULER, "prediction_type": "v_prediction"}, 6, {"s_churn": 100.0}),
    ({"_class_name": DPM}, 8, {}),
    ({"_class_name": DPM, "solver_order": 1, "sigma_schedule": "exponential"}, 8, {}),
    ({"_class_name": DPM, "solver_order": 3}, 8, {}),
    ({"_class_name": DPM, "solver_order": 3, "lower_order_final": False, "rho": 3.0}, 16, {}),
    ({"_class_name": DPM, "solver_type": "heun", "prediction_type": "v_prediction",
      "final_sigmas_type": "sigma_min"}, 8, {}),
    ({"_class_name": DPM, "thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9,
      "euler_at_final": True, "final_sigmas_type": "sigma_min", "lower_order_final": False}, 20, {}),
    ({"_class_name": DPM, "algorithm_type": "deis", "solver_type": "bh2", "sigma_data": 1.0,
      "final_sigmas_type": "sigma_min"}, 8, {}),
    ({**SDE, "solver_order": 1}, 8, {}),
    (SDE, 8, {}),
    ({**SDE, "solver_type": "heun", "sigma_schedule": "exponential", "lower_order_final": False}, 8, {}),
    ({**SDE, "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}, 16, {}),
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


def _assert_schedule_equal(sampler, scheduler):
    # Float32 logs and powers: equal to diffusers' up to an ulp.
    np.testing.assert_allclose(
        np.asarray(sampler.timesteps), scheduler.timesteps.numpy(), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(sampler.tables["sigmas"]), scheduler.sigmas.numpy(), rtol=5e-7)
    assert sampler.timesteps.dtype == jnp.float32
    assert float(sampler.init_noise_sigma) == pytest.approx(scheduler.init_noise_sigma, rel=1e-7)


@pytest.mark.parametrize("case", PARITY_CASES, ids=_case_id)
def test_trajectory_matches_diffusers(case):
    config, n, call = case
    sampler = from_diffusers_config(config, n, **call)
    x_T = np.random.default_rng(5).standard_normal((2, 4, 4, 3)).astype(np.float32)
    key = jax.random.key(11)
    x0, record = _jit_sample_all_steps(sampler, jnp.asarray(x_T), key)
    ref_x0, ref_xs, ref_pred_x0s = run_diffusers(config, n, x_T, key if sampler.stochastic else None, call)

    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(n)
    assert sampler.num_steps == sampler.num_model_evaluations == len(scheduler.timesteps) == n
    _assert_schedule_equal(sampler, scheduler)
    assert sampler.stochastic == (config.get("algorithm_type") == "sde-dpmsolver++" or bool(call))
    assert x0.dtype == jnp.float32 and x0.shape == x_T.shape
    for i in range(n):
        assert_rel_close(record["x_t"][i], ref_xs[i], 1e-5, f"x_t at step {i}")
        assert_rel_close(record["pred_x0"][i], ref_pred_x0s[i], 1e-5, f"pred_x0 at step {i}")
    assert_rel_close(x0, ref_x0, 1e-5, "x0")


def test_model_sees_preconditioned_input_and_noise():
    """The model gets diffusers' ``scale_model_input(x, t)`` and ``t`` from ``scheduler.timesteps``."""
    config = {"_class_name": DPM, "sigma_data": 0.7}
    sampler = from_diffusers_config(config, 5)
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(5)
    seen = []

    def recording_model(x, t):
        jax.debug.callback(lambda x, t: seen.append((np.asarray(x), np.asarray(t))), x, t)
        return jax_model(x, t)

    x_T = np.random.default_rng(0).standard_normal((1, 2, 2, 3)).astype(np.float32)
    _, record = sample(sampler, recording_model, jnp.asarray(x_T), intermediates_every=1)
    assert len(seen) == 5
    for i, (x_in, t) in enumerate(seen):
        sigma = scheduler.sigmas[i].item()
        np.testing.assert_allclose(x_in, np.asarray(record["x_t"][i]) / np.sqrt(sigma**2 + 0.49), rtol=1e-6)
        np.testing.assert_allclose(t, np.full(1, 0.25 * np.log(sigma)), rtol=1e-6)


# -- timesteps ----------------------------------------------------------------------------------------
TIMESTEP_CASES = [
    ({"_class_name": cls, "sigma_schedule": schedule, **extra}, n)
    for cls in (EULER, DPM)
    for schedule in ("karras", "exponential")
    for extra in ({}, {"sigma_min": 0.02, "sigma_max": 14.6, "rho": 9.0, "final_sigmas_type": "sigma_min"})
    for n in (1, 2, 3, 10, 33, 250)
]


@pytest.mark.parametrize("case", TIMESTEP_CASES, ids=lambda c: "-".join(map(str, c[0].values())) + f"-{c[1]}")
def test_timesteps_equal_diffusers(case):
    config, n = case
    sampler = from_diffusers_config(config, n)
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(n)
    _assert_schedule_equal(sampler, scheduler)


# -- the denoising distribution -----------------------------------------------------------------------
GAUSS_MEAN = np.array([0.5, -0.3, 0.0], np.float32)
GAUSS_STD = np.array([0.5, 0.8, 1.0], np.float32)


def _gaussian_edm_model(sigma_data: float, prediction_type: str):
    """The network whose EDM-preconditioned denoiser is exact for x0 ~ N(GAUSS_MEAN, GAUSS_STD^2) per channel.

    It sees ``c_in x`` and ``t = 0.25 log sigma``; ``E[x0 | x] = mu + S^2 / (S^2 + sigma^2) (x - mu)`` and
    ``F = (E[x0 | x] - c_skip x) / c_out`` (``c_out`` negative for v_prediction).
    """
    mu, var = jnp.asarray(GAUSS_MEAN), jnp.asarray(GAUSS_STD) ** 2
    sign = 1.0 if prediction_type == "epsilon" else -1.0

    def model_fn(x_in, t):
        sigma = jnp.exp(4 * t.astype(jnp.float32))[:, None, None, None]
        total = sigma**2 + sigma_data**2
        x = x_in * jnp.sqrt(total)
        denoised = mu + var / (var + sigma**2) * (x - mu)
        return (denoised - sigma_data**2 / total * x) / (sign * sigma * sigma_data / jnp.sqrt(total))

    return model_fn


# Not with churn: diffusers' EDMEulerScheduler applies the model output (taken at sigma_i) to the churned
# sample at sigma_hat, which is not the denoiser there, so its result is biased (in diffusers too).
# Euler is first order: it needs many steps for a 3% accuracy.
@pytest.mark.parametrize(
    "config, n",
    [
        ({"_class_name": EULER}, 200),
        (
            {
                "_class_name": EULER,
                "sigma_schedule": "exponential",
                "prediction_type": "v_prediction",
                "sigma_data": 0.8,
            },
            200,
        ),
        ({"_class_name": DPM}, 50),
        ({"_class_name": DPM, "solver_order": 3, "prediction_type": "v_prediction"}, 25),
        (SDE, 100),
        ({**SDE, "solver_type": "heun", "sigma_data": 1.0}, 100),
    ],  # fmt: skip
    ids=lambda v: "-".join(map(str, v.values())) if isinstance(v, dict) else str(v),
)
def test_exact_denoiser_recovers_gaussian_data(config, n):
    full = {**edm_euler.DEFAULTS, **config}
    model_fn = _gaussian_edm_model(full["sigma_data"], full["prediction_type"])
    sampler = from_diffusers_config(config, n)
    x_T = jax.random.normal(jax.random.key(0), (4096, 2, 2, 3))
    x0 = jax.jit(lambda s, x, k: sample(s, model_fn, x, k))(sampler, x_T, jax.random.key(1))
    x0 = np.asarray(x0).reshape(-1, 3)  # 16384 independent draws per channel
    # Standard errors are ~0.008 s (mean) and ~0.6% (std); discretisation costs these step counts < 2%.
    np.testing.assert_allclose(x0.mean(0), GAUSS_MEAN, atol=0.03)
    np.testing.assert_allclose(x0.std(0) / GAUSS_STD, 1.0, atol=0.03)


# -- jit, vmap, devices -------------------------------------------------------------------------------
# (short name, options): each EDM name, and EDM Euler with churn (stochastic).
DEVICE_CASES = (
    ("edm_euler", {}),
    ("edm_euler", CHURN),
    ("edm_dpm++", {"solver_order": 3}),
    ("edm_dpm++sde", {}),
)


@pytest.mark.parametrize("name, options", DEVICE_CASES, ids=lambda v: str(v))
def test_vmap_eager_and_jit_agree(name, options):
    sampler = from_diffusers_config(scheduler_config_for(name, **options), 4)
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
    assert sampler.stochastic == (resolve_sampler(name).stochastic or options.get("s_churn", 0) > 0)
    assert np.allclose(np.asarray(batched[0]), other_key) != sampler.stochastic


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxdiff.samplers import from_diffusers_config, sample, scheduler_config_for
    import _sampler_peers

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    run = jax.jit(lambda s, x, k: sample(s, _sampler_peers.jax_model, x, k, intermediates_every=2))
    for name, options in CASES:
        sampler = from_diffusers_config(scheduler_config_for(name, **options), 5)
        x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
        ref, ref_rec = run(sampler, jax.device_put(x_T, jax.devices()[0]), jax.random.key(1))
        out, rec = run(sampler, jax.device_put(x_T, NamedSharding(mesh, P("data"))), jax.random.key(1))
        assert len(out.sharding.device_set) == 8, out.sharding
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(rec["x_t"]), np.asarray(ref_rec["x_t"]), rtol=1e-6, atol=1e-6)
    print("ok")
    """
)


@pytest.mark.slow
def test_sharded_batch_on_eight_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), tests, env.get("PYTHONPATH", "")])
    script = f"CASES = {DEVICE_CASES!r}\n" + _MULTI_DEVICE_SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# -- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [edm_euler, edm_dpm_solver], ids=lambda m: m.CLASS_NAME)
def test_defaults_table_is_diffusers_signature(module):
    params = inspect.signature(getattr(diffusers, module.CLASS_NAME).__init__).parameters
    real = {k: p.default for k, p in params.items() if k != "self"}
    assert module.DEFAULTS == real
    if module is edm_euler:  # its step()'s churn options are call options
        step = inspect.signature(diffusers.EDMEulerScheduler.step).parameters
        assert module.CALL_DEFAULTS == {k: step[k].default for k in module.CALL_DEFAULTS}
    scheduler = getattr(diffusers, module.CLASS_NAME)()
    saved = json.loads(scheduler.to_json_string())
    assert saved["_class_name"] == module.CLASS_NAME and "_diffusers_version" in saved
    sampler = from_diffusers_config(saved, 10)
    scheduler.set_timesteps(10)
    _assert_schedule_equal(sampler, scheduler)


def test_short_names_and_registry_entries():
    train = {
        "num_train_timesteps": 500,
        "beta_schedule": "linear",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": False,
        "clip_sample": True,
        "timestep_spacing": "trailing",
    }
    # No beta schedule, spacing or clipping: only the keys an EDM scheduler has.
    assert scheduler_config_for("edm_euler", train) == {
        "_class_name": EULER,
        "num_train_timesteps": 500,
        "prediction_type": "v_prediction",
    }
    assert scheduler_config_for("edm_dpm++", train) == {
        **scheduler_config_for("edm_euler", train),
        "_class_name": DPM,
    }
    sde = scheduler_config_for("edm_dpm++sde", train)
    assert sde["algorithm_type"] == "sde-dpmsolver++" and from_diffusers_config(sde, 5).stochastic
    aliases = {"edm-euler": "edm_euler", EULER: "edm_euler", "edm_dpmsolver++": "edm_dpm++",
               "edm-dpm++": "edm_dpm++", DPM: "edm_dpm++", "edm_dpm++2m_sde": "edm_dpm++sde"}  # fmt: skip
    for name, canonical in aliases.items():
        assert resolve_sampler(name).name == canonical
    assert {"edm_euler", "edm_dpm++", "edm_dpm++sde"} <= set(sampler_names())
    # Only the flow-matching and EDM samplers sample models trained on another noise path than DDPM's.
    not_discrete = {name for name in sampler_names() if not resolve_sampler(name).discrete_schedule}
    assert not_discrete == {"flow_euler", "edm_euler", "edm_dpm++", "edm_dpm++sde", "edm"}
    assert scheduler_config_for("edm_euler", s_churn=2.0)["s_churn"] == 2.0


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"_class_name": EULER, "prediction_type": "sample"}, "prediction_type='sample' is not one of"),
        ({"_class_name": DPM, "prediction_type": "sample"}, "prediction_type='sample' is not one of"),
        ({"_class_name": EULER, "sigma_schedule": "linear"}, "sigma_schedule='linear' is not one of"),
        ({"_class_name": EULER, "final_sigmas_type": "last"}, "final_sigmas_type='last' is not one of"),
        ({"_class_name": EULER, "sigma_min": 0.0}, "sigma_min=0.0 must be a positive number"),
        ({"_class_name": EULER, "num_train_timesteps": 0}, "num_train_timesteps=0 must be a positive"),
        ({"_class_name": DPM, "num_train_timesteps": 10.5}, "num_train_timesteps=10.5 must be a positive"),
        ({"_class_name": DPM, "sigma_max": 0.001}, "sigma_min=0.002 must be below sigma_max=0.001"),
        ({"_class_name": DPM, "sigma_data": "0.5"}, "sigma_data='0.5' must be a positive number"),
        ({"_class_name": DPM, "rho": -1}, "rho=-1 must be a positive number"),
        ({"_class_name": EULER, "s_churn": -1.0}, "s_churn=-1.0 must be at least 0"),
        ({"_class_name": EULER, "s_noise": None}, "s_noise=None must be a number"),
        (
            {"_class_name": EULER, "beta_schedule": "linear"},
            "unknown EDMEulerScheduler config key 'beta_schedule'",
        ),
        ({"_class_name": DPM, "s_churn": 1.0}, "unknown EDMDPMSolverMultistepScheduler config key 's_churn'"),
        ({"_class_name": DPM, "solver_order": 4}, "solver_order=4 is not one of"),
        ({"_class_name": DPM, "algorithm_type": "dpmsolver"}, "algorithm_type='dpmsolver' is not one of"),
        ({"_class_name": DPM, "solver_type": "logSNR"}, "solver_type='logSNR' is not one of"),
        ({"_class_name": DPM, "algorithm_type": "deis"}, "algorithm_type='deis' needs final_sigmas_type="),
        (
            {**SDE, "solver_order": 3},
            "solver_order=3 is not one of 1, 2 with algorithm_type='sde-dpmsolver\\+\\+'",
        ),
    ],  # fmt: skip
)
def test_bad_configs_raise_user_error(config, needle):
    with pytest.raises(UserError, match=needle) as info:
        from_diffusers_config(config, 10)
    assert "\n" not in str(info.value)
