"""EDM's stochastic sampler (``jaxdiff/samplers/edm_stochastic.py``, Karras et al. 2022, Algorithm 2).

- Given the exact denoiser of a Gaussian, it returns that Gaussian (deterministic and with churn);
- two steps against Algorithm 2 written out in float64 NumPy, with churn in both steps;
- it is registered for the ``edm`` objective and reads its keys from the training config.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import denoisers, objectives, samplers
from jaxdiff.errors import UserError

MU, STD = 0.3, 0.6


def _network_of(denoiser, sigma_data, prediction_type="epsilon"):
    """The raw network ``F(c_in x, c_noise)`` whose preconditioned denoiser is ``denoiser(x, sigma)``."""

    def model_fn(x_in, t):
        sigma = jnp.exp(4 * t)[:, None, None, None]  # c_noise = log(sigma) / 4
        c = denoisers.edm_preconditioning(sigma, sigma_data, prediction_type)
        x = x_in / c.c_in
        return (denoiser(x, sigma) - c.c_skip * x) / c.c_out

    return model_fn


def gaussian_denoiser(x, sigma):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MU, STD^2): the exact D of a Gaussian."""
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


@pytest.mark.parametrize(
    "options",
    [
        {},  # S_churn = 0: Heun's deterministic sampler
        {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0},  # churn where 0.05 <= t <= 50
    ],
)
def test_the_exact_denoiser_of_a_gaussian_gives_that_gaussian(options):
    config = {"_class_name": "EDMStochasticSampler", "sigma_data": 0.5, **options}
    # 64 steps: at the paper's 18 this Gaussian's spread is still 5% too wide (discretisation error).
    sampler = samplers.from_diffusers_config(config, 64)
    assert sampler.num_steps == 127 and sampler.stochastic == bool(options)
    key = jax.random.PRNGKey(0)
    x_t = jax.random.normal(key, (4096, 2, 2, 1))
    x0 = jax.jit(lambda x, k: samplers.sample(sampler, _network_of(gaussian_denoiser, 0.5), x, k))(
        x_t, jax.random.PRNGKey(1)
    )
    x0 = np.asarray(x0)
    assert abs(x0.mean() - MU) < 0.015 and abs(x0.std() - STD) < 0.015, (x0.mean(), x0.std())


def _algorithm_2(n, eps, network, sigma_data, *, t, s_churn, s_tmin, s_tmax, s_noise):
    """Algorithm 2 of Karras et al. 2022 in float64, given the start noise ``n`` and the churn noise of
    each step ``eps[i]``; step 0's churn folded into the start as the sampler documents."""

    def denoise(x, sigma):
        total = sigma**2 + sigma_data**2
        c_skip, c_out, c_in = (
            sigma_data**2 / total,
            sigma * sigma_data / math.sqrt(total),
            1 / math.sqrt(total),
        )
        return c_skip * x + c_out * network(c_in * x, math.log(sigma) / 4)

    steps = len(t) - 1
    gammas = [min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= t_i <= s_tmax else 0.0 for t_i in t[:-1]]
    t_hat0 = t[0] * (1 + gammas[0])
    x_hat = math.sqrt(t[0] ** 2 + (t_hat0**2 - t[0] ** 2) * s_noise**2) * n
    x = None
    for i in range(steps):
        t_hat = t[i] * (1 + gammas[i])
        if i > 0:
            x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * s_noise * eps[i]
        d = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x - denoise(x, t[i + 1])) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (d + d_prime) / 2
    return x


def test_two_steps_match_algorithm_2_by_hand():
    options = {"sigma_min": 0.5, "sigma_max": 10.0, "rho": 7.0, "s_churn": 0.5, "s_tmin": 0.0, "s_noise": 1.1}
    sampler = samplers.from_diffusers_config({"_class_name": "EDMStochasticSampler", **options}, 2)
    # Karras eq. 5 with N = 2 is just (sigma_max, sigma_min, 0); gamma = min(0.5 / 2, sqrt 2 - 1) = 0.25.
    t = [10.0, 0.5, 0.0]
    evaluated = [12.5, 0.5, 0.625]  # t_hat_0, t_1 (correction), t_hat_1
    np.testing.assert_allclose(sampler.tables["sigma"], evaluated, rtol=1e-6)
    np.testing.assert_allclose(sampler.timesteps, np.log(evaluated) / 4, rtol=1e-6)
    assert sampler.num_steps == 3 and sampler.stochastic

    network = lambda x_in, c_noise: 0.8 * x_in + 0.1 * c_noise  # noqa: E731
    shape = (3, 2, 2, 1)
    n = jax.random.normal(jax.random.PRNGKey(0), shape)
    key = jax.random.PRNGKey(7)
    got = samplers.sample(sampler, lambda x, c: network(x, c[:, None, None, None]), n, key)
    # The churn of step 1 is the noise of iteration 1 (step 1's first model evaluation follows it).
    eps = [None, np.asarray(samplers.step_noise(key, 1, shape), np.float64)]
    want = _algorithm_2(
        np.asarray(n, np.float64),
        eps,
        network,
        0.5,
        t=t,
        s_churn=0.5,
        s_tmin=0.0,
        s_tmax=math.inf,
        s_noise=1.1,
    )
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_the_edm_objective_samples_with_its_training_keys():
    diffusion = {
        "objective": "edm",
        "sigma_min": 0.01,
        "sigma_max": 20.0,
        "sigma_data": 0.6,
        "rho": 5.0,
        "s_churn": 1.0,
        "prediction_type": "v_prediction",
        "beta_schedule": "linear",  # a DDPM key: not copied
    }
    sampling = objectives.get_objective("edm").make_sampling(diffusion, "edm_stochastic", 40, 0.0)
    config = sampling.scheduler
    assert config["_class_name"] == "EDMStochasticSampler" and "beta_schedule" not in config
    assert {k: config[k] for k in ("sigma_min", "sigma_max", "sigma_data", "rho", "s_churn")} == {
        "sigma_min": 0.01,
        "sigma_max": 20.0,
        "sigma_data": 0.6,
        "rho": 5.0,
        "s_churn": 1.0,
    }
    assert config["prediction_type"] == "v_prediction" and sampling.num_steps == 79
    # v_prediction reads the network output with c_out negated: the exact network still gives the Gaussian.
    model_fn = _network_of(gaussian_denoiser, 0.6, "v_prediction")
    x0 = sampling.run(
        model_fn, jax.random.normal(jax.random.PRNGKey(0), (2048, 2, 2, 1)), jax.random.PRNGKey(1), None
    )
    assert abs(float(x0.mean()) - MU) < 0.03 and abs(float(x0.std()) - STD) < 0.03


@pytest.mark.parametrize(
    "options, match",
    [
        ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min=5.0 must be below sigma_max=1.0"),
        ({"s_churn": -1.0}, "s_churn"),
        ({"prediction_type": "sample"}, "prediction_type='sample'"),
        ({"sigma_data": 0}, "sigma_data=0 must be a positive number"),
    ],
)
def test_bad_sampler_options_are_refused(options, match):
    with pytest.raises(UserError, match=match):
        samplers.from_diffusers_config({"_class_name": "EDMStochasticSampler", **options}, 4)
