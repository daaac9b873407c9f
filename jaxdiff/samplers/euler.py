"""Euler's method on the probability-flow ODE in the VE parametrisation (Karras et al. 2022, Algorithm 2
without churn), as diffusers' ``EulerDiscreteScheduler``.

The state is ``x = x_vp * sqrt(1 + sigma^2)`` with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``; the
model sees ``x / sqrt(1 + sigma^2)`` (diffusers' ``scale_model_input``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import SCHEDULE_DEFAULTS, check_choice, check_num_steps, train_alphas_cumprod
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.timesteps import (
    euler_spaced_timesteps,
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    train_sigmas,
)

KIND = "euler"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "EulerDiscreteScheduler"

# EulerDiscreteScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
    "timestep_spacing": "linspace",
    "timestep_type": "discrete",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "final_sigmas_type": "zero",
}
# Arguments of EulerDiscreteScheduler.step (stochastic "churn"; not implemented: defaults only).
CALL_DEFAULTS: dict[str, Any] = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}
IMPLEMENTED = frozenset(DEFAULTS) - {"use_beta_sigmas"}
PREDICTION_TYPES = ("epsilon", "sample", "original_sample", "v_prediction")

# Its short names (samplers/catalog.py registers them).
ENTRIES = (SamplerEntry(name="euler", class_name=CLASS_NAME),)


@dataclasses.dataclass(frozen=True)
class EulerOptions:
    prediction_type: str
    kind: ClassVar[str] = KIND
    stochastic: ClassVar[bool] = False


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The Euler sampler for a complete, validated ``EulerDiscreteScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    check_choice(cfg, "interpolation_type", ("linear", "log_linear"))
    check_choice(cfg, "timestep_type", ("discrete", "continuous"))
    check_choice(cfg, "final_sigmas_type", ("zero", "sigma_min"))
    if cfg["use_karras_sigmas"] and cfg["use_exponential_sigmas"]:
        raise UserError("only one of use_karras_sigmas, use_exponential_sigmas can be true")
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)

    alphas_cumprod = train_alphas_cumprod(cfg)
    if cfg["rescale_betas_zero_snr"]:
        alphas_cumprod[-1] = 2.0**-24  # diffusers: close to 0 so that the first sigma is finite
    timesteps = euler_spaced_timesteps(cfg["timestep_spacing"], T, n, int(cfg["steps_offset"]))
    sigmas = train_sigmas(alphas_cumprod)
    log_sigmas = np.log(sigmas)
    if cfg["interpolation_type"] == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    else:
        # float32 linspace in log sigma over n + 1 points (diffusers then appends the final sigma too).
        ramp = np.linspace(np.log(sigmas[-1]), np.log(sigmas[0]), n + 1, dtype=np.float64).astype(np.float32)
        sigmas = np.exp(ramp)
    if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"]:
        sigma_min = cfg["sigma_min"] if cfg["sigma_min"] is not None else sigmas[-1].item()
        sigma_max = cfg["sigma_max"] if cfg["sigma_max"] is not None else sigmas[0].item()
        convert = karras_sigmas if cfg["use_karras_sigmas"] else exponential_sigmas
        sigmas = convert(sigma_max, sigma_min, n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    if cfg["final_sigmas_type"] == "sigma_min":
        sigma_last = np.sqrt((np.float32(1.0) - alphas_cumprod[0]) / alphas_cumprod[0])
    else:
        sigma_last = 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    if cfg["timestep_type"] == "continuous" and cfg["prediction_type"] == "v_prediction":
        timesteps = np.float32(0.25) * np.log(sigmas[:-1])  # EDM's c_noise = log(sigma) / 4
    timesteps = timesteps.astype(np.float32)

    max_sigma = sigmas.max()
    if cfg["timestep_spacing"] in ("linspace", "trailing"):
        init_noise_sigma = max_sigma
    else:
        init_noise_sigma = np.sqrt(max_sigma * max_sigma + np.float32(1.0))
    prediction_type = "sample" if cfg["prediction_type"] == "original_sample" else cfg["prediction_type"]
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(init_noise_sigma),
        tables={"sigmas": jnp.asarray(sigmas)},
        options=EulerOptions(prediction_type=prediction_type),
    )


def euler_step(
    x: jax.Array, model_output: jax.Array, sigma: jax.Array, sigma_next: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """One Euler step of ``dx/dsigma = (x - x0(x, sigma)) / sigma`` (Karras et al. 2022, eq. 3 / Alg. 2).

    Args:
      x: float32 ``[B, H, W, C]`` at noise level ``sigma`` (VE scaling).
      model_output: the model's prediction given ``x / sqrt(1 + sigma^2)``.
      sigma, sigma_next: float32 scalars.

    Returns:
      ``(x_next, x0_pred)``.
    """
    if prediction_type == "epsilon":
        x0 = x - sigma * model_output
    elif prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction, with x_vp = x / sqrt(1 + sigma^2)
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    derivative = (x - x0) / sigma
    return x + derivative * (sigma_next - sigma), x0


def init_state(x: jax.Array) -> tuple:
    return ()


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    """``x / sqrt(1 + sigma_i^2)``: the VP-scaled input the model was trained on."""
    sigma = sampler.tables["sigmas"][i]
    return x / ((sigma**2 + 1) ** 0.5)


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: None
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i`` of the loop: ``(x_next, x0_pred, state)``."""
    sigmas = sampler.tables["sigmas"]
    x_next, x0 = euler_step(x, model_output, sigmas[i], sigmas[i + 1], sampler.options.prediction_type)
    return x_next, x0, state
