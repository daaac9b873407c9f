"""Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``), as diffusers'
``EulerAncestralDiscreteScheduler``.

Each step splits the move from ``sigma`` to ``sigma_next`` into a deterministic Euler step down to
``sigma_down`` and fresh noise of standard deviation ``sigma_up``, with ``sigma_down^2 + sigma_up^2 =
sigma_next^2`` and ``sigma_up = sigma_next sqrt(1 - sigma_next^2 / sigma^2)`` (the DDPM posterior's noise
at eta = 1). State and scaling are those of ``euler``: ``x = x_vp * sqrt(1 + sigma^2)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers._common import SCHEDULE_DEFAULTS, check_choice, check_num_steps, train_alphas_cumprod
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.timesteps import euler_spaced_timesteps, train_sigmas

KIND = "euler_a"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "EulerAncestralDiscreteScheduler"

# EulerAncestralDiscreteScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
CALL_DEFAULTS: dict[str, Any] = {}
IMPLEMENTED = frozenset(DEFAULTS)
# diffusers raises NotImplementedError for "sample".
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="euler_a",
        class_name=CLASS_NAME,
        aliases=("euler-a", "euler_ancestral", "euler-ancestral"),
        stochastic=True,
    ),
)


@dataclasses.dataclass(frozen=True)
class EulerAncestralOptions:
    prediction_type: str
    kind: ClassVar[str] = KIND
    stochastic: ClassVar[bool] = True


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The Euler ancestral sampler for a complete, validated ``EulerAncestralDiscreteScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)
    alphas_cumprod = train_alphas_cumprod(cfg)
    if cfg["rescale_betas_zero_snr"]:
        alphas_cumprod[-1] = 2.0**-24  # diffusers: close to 0 so that the first sigma is finite
    timesteps = euler_spaced_timesteps(cfg["timestep_spacing"], T, n, int(cfg["steps_offset"]))
    sigmas = train_sigmas(alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    max_sigma = sigmas.max()
    if cfg["timestep_spacing"] in ("linspace", "trailing"):
        init_noise_sigma = max_sigma
    else:
        init_noise_sigma = np.sqrt(max_sigma * max_sigma + np.float32(1.0))
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(init_noise_sigma),
        tables={"sigmas": jnp.asarray(sigmas)},
        options=EulerAncestralOptions(prediction_type=cfg["prediction_type"]),
    )


def init_state(x: jax.Array) -> tuple:
    return ()


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    """``x / sqrt(1 + sigma_i^2)``: the VP-scaled input the model was trained on."""
    sigma = sampler.tables["sigmas"][i]
    return x / ((sigma**2 + 1) ** 0.5)


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: jax.Array
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: ``(x_next, x0_pred, state)``; ``noise`` is standard normal with ``x``'s shape."""
    sigmas = sampler.tables["sigmas"]
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    if sampler.options.prediction_type == "epsilon":
        x0 = x - sigma * model_output
    else:  # v_prediction
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    derivative = (x - x0) / sigma
    x_next = x + derivative * (sigma_down - sigma) + noise * sigma_up
    return x_next, x0, state
