"""DDIM (Song et al. 2021), as diffusers' ``DDIMScheduler``; ``eta`` interpolates from the deterministic
DDIM (0) to DDPM-like ancestral sampling (1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
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

KIND = "ddim"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "DDIMScheduler"

# DDIMScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    **THRESHOLDING_DEFAULTS,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "clip_sample_range": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}
# Arguments of DDIMPipeline.__call__ / DDIMScheduler.step (None means False there).
CALL_DEFAULTS: dict[str, Any] = {"eta": 0.0, "use_clipped_model_output": False}
IMPLEMENTED = frozenset(DEFAULTS) | frozenset(CALL_DEFAULTS)

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="ddim",
        class_name=CLASS_NAME,
        train_keys=(
            "clip_sample",
            "clip_sample_range",
            "timestep_spacing",
            "steps_offset",
            *THRESHOLDING_DEFAULTS,
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class DDIMOptions:
    prediction_type: str
    clipping: X0Clipping
    eta: float
    use_clipped_model_output: bool
    kind: ClassVar[str] = KIND

    @property
    def stochastic(self) -> bool:
        return self.eta > 0


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The DDIM sampler for a complete, validated ``DDIMScheduler`` config (plus ``eta``, ...)."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    eta = float(cfg["eta"])
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"eta={cfg['eta']!r} must be between 0 and 1")
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=True)
    alphas_cumprod = train_alphas_cumprod(cfg)
    timesteps = spaced_timesteps(cfg["timestep_spacing"], T, n, int(cfg["steps_offset"]))
    check_timesteps_in_range(timesteps, T)
    # diffusers steps back by T // n whatever the spacing; past t = 0 it uses 1 or alpha_bar_0.
    prev = timesteps - T // n
    final_alpha_bar = np.float32(1.0) if cfg["set_alpha_to_one"] else alphas_cumprod[0]
    alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.clip(prev, 0, T - 1)], final_alpha_bar)
    options = DDIMOptions(
        prediction_type=cfg["prediction_type"],
        clipping=X0Clipping.from_config(cfg),
        eta=eta,
        use_clipped_model_output=bool(cfg["use_clipped_model_output"]),
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


def ddim_step(
    x_t: jax.Array,
    model_output: jax.Array,
    alpha_bar_t: jax.Array,
    alpha_bar_prev: jax.Array,
    noise: jax.Array | None,
    options: DDIMOptions,
) -> tuple[jax.Array, jax.Array]:
    """One generalised DDIM step ``x_t -> x_s`` (Song et al. 2021, eqs. 12 and 16).

    ``x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)``.

    Args:
      x_t: float32 ``[B, H, W, C]``; model_output: the model's prediction at ``x_t`` (same shape).
      alpha_bar_t, alpha_bar_prev: float32 scalars at ``t`` and at the previous timestep ``s``.
      noise: standard normal ``z`` (``x_t``'s shape), used when ``eta > 0``.

    Returns:
      ``(x_s, x0_pred)``.
    """
    beta_bar_t = 1 - alpha_bar_t
    x0, eps = predicted_x0_and_eps(model_output, x_t, alpha_bar_t, options.prediction_type)
    x0 = clip_x0(x0, options.clipping)
    variance = ((1 - alpha_bar_prev) / beta_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    std = options.eta * variance**0.5
    if options.use_clipped_model_output:
        # Re-derive eps from the clipped x0 (as GLIDE does).
        eps = (x_t - alpha_bar_t**0.5 * x0) / beta_bar_t**0.5
    # 1 - alpha_bar_s - sigma^2 >= 0 in exact arithmetic but can round below 0 when eta = 1 (diffusers
    # then yields NaN); clamp it.
    x_prev = alpha_bar_prev**0.5 * x0 + jnp.maximum(1 - alpha_bar_prev - std**2, 0.0) ** 0.5 * eps
    if options.eta > 0:
        x_prev = x_prev + std * noise
    return x_prev, x0


def init_state(x: jax.Array) -> tuple:
    return ()


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    return x


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: jax.Array
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i`` of the loop: ``(x_prev, x0_pred, state)``."""
    tables = sampler.tables
    x_prev, x0 = ddim_step(
        x, model_output, tables["alpha_bar"][i], tables["alpha_bar_prev"][i], noise, sampler.options
    )
    return x_prev, x0, state
