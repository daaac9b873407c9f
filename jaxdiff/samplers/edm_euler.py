"""Euler's method on the EDM probability-flow ODE (Karras et al. 2022, Algorithm 2 with Euler steps), as
diffusers' ``EDMEulerScheduler``; preconditioning and sigmas from ``samplers/edm.py``.

Step ``i``: ``x_{i+1} = x_hat + (x_hat - D) / sigma_hat (sigma_{i+1} - sigma_hat)``. With "churn"
(``s_churn > 0``, a pipeline-call option of ``step``) the noise level is first raised to
``sigma_hat = sigma_i (1 + gamma)``, ``gamma = min(s_churn / N, sqrt(2) - 1)`` where
``s_tmin <= sigma_i <= s_tmax`` (else 0), by adding ``s_noise sqrt(sigma_hat^2 - sigma_i^2)`` fresh
noise: ``x_hat``. As in diffusers the model has already been evaluated at ``(x_i, sigma_i)`` and its output
is used with ``(x_hat, sigma_hat)`` in ``D = c_skip(sigma_hat) x_hat + c_out(sigma_hat) F``; without churn
``x_hat = x_i`` and ``sigma_hat = sigma_i``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers import edm
from jaxdiff.samplers._common import check_num_steps
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry

KIND = "edm_euler"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "EDMEulerScheduler"

# EDMEulerScheduler.__init__ defaults in diffusers 0.42.1, and the churn options of its step().
DEFAULTS: dict[str, Any] = dict(edm.EDM_DEFAULTS)
CALL_DEFAULTS: dict[str, Any] = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
IMPLEMENTED = frozenset(DEFAULTS) | frozenset(CALL_DEFAULTS)

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(name="edm_euler", class_name=CLASS_NAME, aliases=("edm-euler",), discrete_schedule=False),
)


@dataclasses.dataclass(frozen=True)
class EDMEulerOptions:
    s_noise: float
    stochastic: bool  # some step has churn (gamma > 0)
    kind: ClassVar[str] = KIND


def _number(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise UserError(f"{key}={value!r} must be a number")
    return float(value)


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The EDM Euler sampler for a complete, validated ``EDMEulerScheduler`` config (and ``s_churn``...)."""
    edm.check_config(cfg)
    s_churn, s_tmin, s_tmax = _number(cfg, "s_churn"), _number(cfg, "s_tmin"), _number(cfg, "s_tmax")
    s_noise = _number(cfg, "s_noise")
    if s_churn < 0:
        raise UserError(f"s_churn={cfg['s_churn']!r} must be at least 0")
    n = check_num_steps(num_inference_steps, int(cfg["num_train_timesteps"]), at_most_train=False)

    sigmas = edm.inference_sigmas(cfg, n, float64_ramp=True)
    timesteps = edm.precondition_noise(sigmas)
    sigma_last = sigmas[-1] if cfg["final_sigmas_type"] == "sigma_min" else np.float32(0.0)
    all_sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

    # Churn, per step: diffusers compares the float32 sigma with the bounds rounded to float32.
    churned = (np.float32(s_tmin) <= sigmas) & (sigmas <= np.float32(s_tmax))
    gammas = np.where(churned, min(s_churn / n, 2**0.5 - 1), 0.0)
    sigma_hats = (sigmas * (gammas + 1).astype(np.float32)).astype(np.float32)
    churn_std = np.sqrt(sigma_hats * sigma_hats - sigmas * sigmas).astype(np.float32)
    c_skip, c_out = edm.output_scales(sigma_hats, float(cfg["sigma_data"]), cfg["prediction_type"])
    tables = {
        "sigmas": all_sigmas,
        "c_in": edm.input_scale(sigmas, float(cfg["sigma_data"])),
        "sigma_hats": sigma_hats,
        "churn_std": churn_std,
        "c_skip": c_skip,
        "c_out": c_out,
    }
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(edm.init_noise_sigma(cfg)),
        tables={name: jnp.asarray(table) for name, table in tables.items()},
        options=EDMEulerOptions(s_noise=s_noise, stochastic=bool(np.any(gammas > 0))),
    )


def init_state(x: jax.Array) -> tuple:
    return ()


scale_model_input = edm.scale_model_input


def update(
    sampler: Sampler,
    i: jax.Array,
    x: jax.Array,
    model_output: jax.Array,
    state: tuple,
    noise: jax.Array | None,
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: ``(x_next, D, state)``; ``noise`` (standard normal, ``x``'s shape) only with churn."""
    tables = sampler.tables
    sigma_hat = tables["sigma_hats"][i]
    if sampler.options.stochastic:
        # churn_std is 0 at the steps without churn, where x is then unchanged.
        x = x + (noise * sampler.options.s_noise) * tables["churn_std"][i]
    x0 = tables["c_skip"][i] * x + tables["c_out"][i] * model_output
    derivative = (x - x0) / sigma_hat
    dt = tables["sigmas"][i + 1] - sigma_hat
    return x + derivative * dt, x0, state
