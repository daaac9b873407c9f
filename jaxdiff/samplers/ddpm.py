"""DDPM ancestral sampling (Ho et al. 2020), as diffusers' ``DDPMScheduler``.

With fewer inference steps than training steps the chain jumps from ``t`` to the next timestep ``s``;
the per-step ``alpha_t`` is then ``alpha_bar_t / alpha_bar_s`` (as diffusers does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers._common import (
    SCHEDULE_DEFAULTS,
    THRESHOLDING_DEFAULTS,
    check_choice,
    check_num_steps,
    check_timesteps_in_range,
    train_alphas_cumprod,
)
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.thresholding import PREDICTION_TYPES, X0Clipping, clip_x0, predicted_x0_and_eps
from jaxdiff.samplers.timesteps import spaced_timesteps

KIND = "ddpm"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "DDPMScheduler"

# DDPMScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    **THRESHOLDING_DEFAULTS,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "clip_sample_range": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
# Arguments of the pipeline / step() call rather than of the config.
CALL_DEFAULTS: dict[str, Any] = {}
# Keys that may take values other than their default (all of DDPMScheduler's; variance_type is checked below).
IMPLEMENTED = frozenset(DEFAULTS)
# "fixed_large_log" yields sqrt(log(beta)) = NaN in diffusers; "learned*" need a 2C-channel model output.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="ddpm",
        class_name=CLASS_NAME,
        train_keys=(
            "variance_type",
            "clip_sample",
            "clip_sample_range",
            "timestep_spacing",
            "steps_offset",
            *THRESHOLDING_DEFAULTS,
        ),
        stochastic=True,
    ),
)


@dataclasses.dataclass(frozen=True)
class DDPMOptions:
    prediction_type: str
    variance_type: str
    clipping: X0Clipping
    kind: ClassVar[str] = KIND
    stochastic: ClassVar[bool] = True


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The DDPM sampler for a complete, validated ``DDPMScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    check_choice(cfg, "variance_type", VARIANCE_TYPES)
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=True)
    alphas_cumprod = train_alphas_cumprod(cfg)
    timesteps = spaced_timesteps(cfg["timestep_spacing"], T, n, int(cfg["steps_offset"]))
    check_timesteps_in_range(timesteps, T)
    # The previous timestep is the next one in the list; before t=0 alpha_bar is 1.
    prev = np.append(timesteps[1:], -1)
    alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], np.float32(1.0))
    options = DDPMOptions(
        prediction_type=cfg["prediction_type"],
        variance_type=cfg["variance_type"],
        clipping=X0Clipping.from_config(cfg),
    )
    return Sampler(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        init_noise_sigma=jnp.float32(1.0),
        tables={
            "alpha_bar": jnp.asarray(alphas_cumprod[timesteps], jnp.float32),
            "alpha_bar_prev": jnp.asarray(alpha_bar_prev, jnp.float32),
        },
        options=options,
    )


def ddpm_step(
    x_t: jax.Array,
    model_output: jax.Array,
    alpha_bar_t: jax.Array,
    alpha_bar_prev: jax.Array,
    noise: jax.Array,
    options: DDPMOptions,
) -> tuple[jax.Array, jax.Array]:
    """One ancestral step ``x_t -> x_s ~ q(x_s | x_t, x_0 = x0_pred)`` (Ho et al. 2020, eqs. 6, 7 and 15).

    ``mean = sqrt(alpha_bar_s) beta_t / (1 - alpha_bar_t) x0 + sqrt(alpha_t) (1 - alpha_bar_s) / (1 -
    alpha_bar_t) x_t`` with ``alpha_t = alpha_bar_t / alpha_bar_s``, ``beta_t = 1 - alpha_t``;
    variance ``(1 - alpha_bar_s) / (1 - alpha_bar_t) beta_t`` ("fixed_small", the true posterior's) or
    ``beta_t`` ("fixed_large").

    Args:
      x_t: float32 ``[B, H, W, C]``; model_output: the model's prediction at ``x_t`` (same shape).
      alpha_bar_t, alpha_bar_prev: float32 scalars, ``alpha_bar`` at ``t`` and at the next timestep ``s``.
      noise: standard normal, ``x_t``'s shape (zeros at ``t = 0``, where no noise is added).

    Returns:
      ``(x_s, x0_pred)``.
    """
    beta_bar_t = 1 - alpha_bar_t
    beta_bar_prev = 1 - alpha_bar_prev
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    x0, _ = predicted_x0_and_eps(model_output, x_t, alpha_bar_t, options.prediction_type)
    x0 = clip_x0(x0, options.clipping)
    mean = (alpha_bar_prev**0.5 * beta_t) / beta_bar_t * x0 + alpha_t**0.5 * beta_bar_prev / beta_bar_t * x_t
    # Clamped as diffusers does (it takes a log of it for the *_log variants).
    posterior_variance = jnp.maximum(beta_bar_prev / beta_bar_t * beta_t, 1e-20)
    if options.variance_type == "fixed_large":
        std = beta_t**0.5
    elif options.variance_type == "fixed_small_log":
        std = jnp.exp(0.5 * jnp.log(posterior_variance))
    else:
        std = posterior_variance**0.5
    return mean + std * noise, x0


def init_state(x: jax.Array) -> tuple:
    return ()


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    return x


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: jax.Array
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i`` of the loop: ``(x_prev, x0_pred, state)``."""
    tables = sampler.tables
    noise = jnp.where(sampler.timesteps[i] > 0, noise, 0.0)
    x_prev, x0 = ddpm_step(
        x, model_output, tables["alpha_bar"][i], tables["alpha_bar_prev"][i], noise, sampler.options
    )
    return x_prev, x0, state
