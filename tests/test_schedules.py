"""Noise schedules and the forward process against diffusers' DDPMScheduler (torch, CPU)."""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from jaxdiff.errors import UserError
from jaxdiff.schedules import (
    BETA_SCHEDULES,
    NoiseSchedule,
    add_noise,
    get_velocity,
    make_schedule,
    schedule_from_config,
    snr,
)

SCHEDULE_CASES = [
    dict(beta_schedule=name, rescale_betas_zero_snr=rescale, num_train_timesteps=T)
    for name in BETA_SCHEDULES
    for rescale in (False, True)
    for T in (1000, 97)
] + [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="linear", beta_start=0.001, beta_end=0.05, num_train_timesteps=300),
    dict(beta_schedule="sigmoid", beta_start=0.0002, beta_end=0.03, num_train_timesteps=500),
]


def _ids(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("kwargs", SCHEDULE_CASES, ids=_ids)
def test_tables_match_diffusers(kwargs):
    ours = make_schedule(**kwargs)
    theirs = diffusers.DDPMScheduler(**kwargs)
    assert ours.num_train_timesteps == kwargs.get("num_train_timesteps", 1000)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(ours, name).dtype == jnp.float32
    # Each entry is diffusers' up to float32 rounding: torch's float32 linspace / sigmoid / sqrt are not
    # correctly rounded, ours are (computed in float64, rounded once).
    ac_ours, ac_theirs = np.asarray(ours.alphas_cumprod), theirs.alphas_cumprod.numpy()
    np.testing.assert_allclose(ac_ours, ac_theirs, rtol=1e-6, atol=1e-6)
    alphas_atol = 2e-5 if kwargs.get("rescale_betas_zero_snr") else 1e-6
    np.testing.assert_allclose(np.asarray(ours.alphas), theirs.alphas.numpy(), rtol=0, atol=alphas_atol)
    if kwargs["beta_schedule"] in ("squaredcos_cap_v2", "laplace") and not kwargs.get(
        "rescale_betas_zero_snr"
    ):
        # Python float maths in both: bit-identical.
        np.testing.assert_array_equal(np.asarray(ours.betas), theirs.betas.numpy())
        np.testing.assert_array_equal(ac_ours, ac_theirs)
    if kwargs.get("rescale_betas_zero_snr"):
        # Rescaled betas are 1 - alpha_bar_t / alpha_bar_{t-1}: a float32 rounding of alpha_bar near the
        # end of the schedule (where it tends to 0) moves them by up to ~1e-5.
        np.testing.assert_allclose(np.asarray(ours.betas), theirs.betas.numpy(), rtol=0, atol=2e-5)
        assert float(ours.alphas_cumprod[-1]) == 0.0 == float(theirs.alphas_cumprod[-1])
    else:
        np.testing.assert_allclose(np.asarray(ours.betas), theirs.betas.numpy(), rtol=5e-7, atol=0)


def test_trained_betas_and_config():
    betas = np.linspace(1e-4, 0.03, 50) ** 1.5
    ours = make_schedule(num_train_timesteps=50, trained_betas=betas)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=50, trained_betas=betas)
    np.testing.assert_array_equal(np.asarray(ours.betas), theirs.betas.numpy())
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), theirs.alphas_cumprod.numpy(), rtol=1e-7)
    # schedule_from_config ignores keys that are not about the schedule.
    config = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 200,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "objective": "ddpm",
    }
    from_config = schedule_from_config(config)
    direct = make_schedule(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_array_equal(np.asarray(from_config.alphas_cumprod), np.asarray(direct.alphas_cumprod))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(beta_schedule="cosine"), "'cosine'"),
        (dict(num_train_timesteps=0), "num_train_timesteps=0"),
        (dict(num_train_timesteps=10, trained_betas=[0.1] * 9), "trained_betas"),
    ],
)
def test_bad_schedules_raise_user_error(kwargs, needle):
    with pytest.raises(UserError, match=needle) as info:
        make_schedule(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_forward_process_matches_diffusers(beta_schedule):
    kwargs = dict(beta_schedule=beta_schedule, rescale_betas_zero_snr=beta_schedule == "linear")
    ours, theirs = make_schedule(**kwargs), diffusers.DDPMScheduler(**kwargs)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (6, 5, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 1, 17, 500, 998, 999])
    x0_t, noise_t, t_t = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)

    x_t = jax.jit(add_noise)(ours, x0, noise, t)
    np.testing.assert_allclose(
        np.asarray(x_t), theirs.add_noise(x0_t, noise_t, t_t).numpy(), rtol=0, atol=2e-6
    )
    v = jax.jit(get_velocity)(ours, x0, noise, t)
    np.testing.assert_allclose(
        np.asarray(v), theirs.get_velocity(x0_t, noise_t, t_t).numpy(), rtol=0, atol=2e-6
    )
    np.testing.assert_allclose(
        np.asarray(snr(ours, t[:-1])), compute_snr(theirs, t_t[:-1]).numpy(), rtol=5e-5, atol=0
    )
    # The forward process is what it claims: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, v likewise.
    ab = np.asarray(ours.alphas_cumprod, np.float64)[t][:, None, None, None]
    np.testing.assert_allclose(np.asarray(x_t), np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, atol=1e-6)
    np.testing.assert_allclose(np.asarray(v), np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0, atol=1e-6)


def test_schedule_is_a_pytree():
    schedule = make_schedule(num_train_timesteps=10)
    leaves, treedef = jax.tree.flatten(schedule)
    assert len(leaves) == 3
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert isinstance(rebuilt, NoiseSchedule) and rebuilt.num_train_timesteps == 10
    doubled = jax.jit(lambda s: jax.tree.map(lambda a: 2 * a, s))(schedule)
    np.testing.assert_allclose(np.asarray(doubled.betas), 2 * np.asarray(schedule.betas))
    # vmap over the batch of add_noise agrees with the batched call.
    x0, noise, t = jnp.ones((4, 2, 2, 1)), jnp.full((4, 2, 2, 1), 0.5), jnp.array([0, 3, 6, 9])
    per_example = jax.vmap(lambda a, b, c: add_noise(schedule, a[None], b[None], c[None])[0])(x0, noise, t)
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(add_noise(schedule, x0, noise, t)))
