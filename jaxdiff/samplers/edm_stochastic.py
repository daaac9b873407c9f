"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for models with EDM preconditioning.

With noise levels ``t_0 > t_1 > ... > t_{N-1} > t_N = 0`` (eq. 5, ``rho``), step ``i`` is::

    gamma_i = min(S_churn / N, sqrt(2) - 1)  if S_tmin <= t_i <= S_tmax  else 0
    t_hat   = t_i + gamma_i t_i
    x_hat   = x_i + sqrt(t_hat^2 - t_i^2) eps,       eps ~ N(0, S_noise^2 I)     (churn)
    d       = (x_hat - D(x_hat, t_hat)) / t_hat                                   (Euler step)
    x_{i+1} = x_hat + (t_{i+1} - t_hat) d
    if t_{i+1} != 0:                                                              (2nd-order correction)
        d'      = (x_{i+1} - D(x_{i+1}, t_{i+1})) / t_{i+1}
        x_{i+1} = x_hat + (t_{i+1} - t_hat) (d + d') / 2

with ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (``jaxdiff.denoisers.edm``). ``S_churn = 0``
is the deterministic Heun sampler (Algorithm 1), ``2 N - 1`` model evaluations.

As ``samplers/scan.py`` runs it (one model evaluation per iteration), iteration ``2 i`` is step ``i``'s
Euler step at ``x_hat`` and iteration ``2 i + 1`` its correction at ``x_{i+1}``, which then adds the churn
of step ``i + 1`` with the noise ``step_noise(key, 2 i + 1)``. Step 0's churn is folded into the start:
``x_hat_0 = sqrt(t_0^2 + (t_hat_0^2 - t_0^2) S_noise^2) n`` (``init_noise_sigma``), which has the
distribution of ``x_0 + sqrt(t_hat_0^2 - t_0^2) eps`` with ``x_0 = t_0 n``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoisers.edm import PREDICTION_TYPES, edm_preconditioning
from jaxdiff.errors import UserError
from jaxdiff.samplers._common import check_choice, check_num_steps
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.timesteps import karras_sigmas

KIND = "edm_stochastic"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "EDMStochasticSampler"  # jaxdiff's own: diffusers has no Algorithm 2 scheduler

# The paper's defaults (sigma range, rho, sigma_data of its CIFAR-10 models; S_churn = 0: deterministic).
DEFAULTS: dict[str, Any] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "rho": 7.0,
    "prediction_type": "epsilon",
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": float("inf"),
    "s_noise": 1.0,
}
CALL_DEFAULTS: dict[str, Any] = {}
IMPLEMENTED = frozenset(DEFAULTS)

# Its short names (samplers/catalog.py registers them); the training config's EDM keys are copied.
ENTRIES = (
    SamplerEntry(
        name="edm",
        class_name=CLASS_NAME,
        aliases=("edm_stochastic", "edm_heun"),
        train_keys=("sigma_min", "sigma_max", "sigma_data", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise"),
        stochastic=True,
        discrete_schedule=False,
    ),
)


@dataclasses.dataclass(frozen=True)
class EDMStochasticOptions:
    sigma_data: float
    prediction_type: str
    stochastic: bool
    kind: ClassVar[str] = KIND


def _positive(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{key}={value!r} must be a positive number")
    return float(value)


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The sampler for a complete, validated config (``DEFAULTS``' keys); ``N = num_inference_steps``."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    sigma_min, sigma_max, rho = (_positive(cfg, k) for k in ("sigma_min", "sigma_max", "rho"))
    sigma_data, s_noise = _positive(cfg, "sigma_data"), _positive(cfg, "s_noise")
    if sigma_min >= sigma_max:
        raise UserError(f"sigma_min={sigma_min} must be below sigma_max={sigma_max}")
    s_churn, s_tmin, s_tmax = (float(cfg[k]) for k in ("s_churn", "s_tmin", "s_tmax"))
    if s_churn < 0 or s_tmin < 0 or s_tmax < s_tmin:
        raise UserError(f"need s_churn >= 0 and 0 <= s_tmin <= s_tmax (got {s_churn}, {s_tmin}, {s_tmax})")
    n = check_num_steps(num_inference_steps, 0, at_most_train=False)

    t = np.append(karras_sigmas(sigma_max, sigma_min, n, rho), 0.0)  # t_0 .. t_N, float64
    in_range = (t[:n] >= s_tmin) & (t[:n] <= s_tmax)
    gamma = np.where(in_range, min(s_churn / n, math.sqrt(2) - 1), 0.0)
    t_hat = t[:n] + gamma * t[:n]
    # Iteration 2i evaluates D at (x_hat_i, t_hat_i), iteration 2i+1 at (x_{i+1}, t_{i+1}).
    sigma = np.stack([t_hat, t[1:]], axis=1).reshape(-1)[: 2 * n - 1]
    sigma_next = np.stack([t[1:], np.zeros(n)], axis=1).reshape(-1)[: 2 * n - 1]
    churn = np.sqrt(t_hat[1:] ** 2 - t[1:n] ** 2) * s_noise  # added after step i's correction, for i + 1
    churn_std = np.stack([np.zeros(n - 1), churn], axis=1).reshape(-1)
    churn_std = np.append(churn_std, 0.0)[: 2 * n - 1]
    init_noise_sigma = math.sqrt(t[0] ** 2 + (t_hat[0] ** 2 - t[0] ** 2) * s_noise**2)
    c_noise = edm_preconditioning(jnp.asarray(sigma, jnp.float32), sigma_data).c_noise
    return Sampler(
        timesteps=c_noise,
        init_noise_sigma=jnp.float32(init_noise_sigma),
        tables={
            "sigma": jnp.asarray(sigma, jnp.float32),
            "sigma_next": jnp.asarray(sigma_next, jnp.float32),
            "churn_std": jnp.asarray(churn_std, jnp.float32),
        },
        options=EDMStochasticOptions(
            sigma_data=sigma_data,
            prediction_type=cfg["prediction_type"],
            stochastic=bool(np.any(churn_std > 0)),
        ),
    )


def init_state(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(d, t_{i+1} - t_hat, x_hat)`` of the last Euler step, for the correction that follows it."""
    return jnp.zeros_like(x), jnp.zeros((), jnp.float32), jnp.zeros_like(x)


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    """``c_in x`` at the iteration's noise level."""
    return x * edm_preconditioning(sampler.tables["sigma"][i], sampler.options.sigma_data).c_in


def first_stage(sampler: Sampler, i: jax.Array) -> jax.Array:
    """Whether iteration ``i`` is a step's first stage (its Euler step, even ``i``), where loss guidance
    moves ``x`` (``samplers/scan.py``); bool scalar."""
    return i % 2 == 0


def update(
    sampler: Sampler,
    i: jax.Array,
    x: jax.Array,
    model_output: jax.Array,
    state: tuple,
    noise: jax.Array | None,
) -> tuple[jax.Array, jax.Array, tuple]:
    """Iteration ``i``: the Euler step at even ``i``, the correction (and the next churn) at odd ``i``."""
    tables, options = sampler.tables, sampler.options
    sigma = tables["sigma"][i]
    c = edm_preconditioning(sigma, options.sigma_data, options.prediction_type)
    denoised = c.c_skip * x + c.c_out * model_output

    def euler():  # x is x_hat, sigma is t_hat
        d = (x - denoised) / sigma
        dt = tables["sigma_next"][i] - sigma
        return x + dt * d, denoised, (d, dt, x)

    def correction():  # x is the Euler step's x_{i+1}, sigma is t_{i+1}
        d, dt, x_hat = state
        x_next = x_hat + dt * (d + (x - denoised) / sigma) / 2
        if noise is not None:
            x_next = x_next + tables["churn_std"][i] * noise
        return x_next, denoised, state

    return jax.lax.cond(i % 2 == 0, euler, correction)
