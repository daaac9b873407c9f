"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn),
as diffusers' ``HeunDiscreteScheduler``.

diffusers runs one ``step`` per model evaluation: its ``timesteps`` list each inner timestep twice,
``[t_0, t_1, t_1, ..., t_{N-1}, t_{N-1}]`` (``2 N - 1`` entries), and its ``sigmas`` are
``[s_0, s_1, s_1, ..., s_{N-1}, s_{N-1}, 0]``. Even steps are Euler predictor steps from ``s_k`` to
``s_{k+1}``; odd steps re-evaluate the model at the predicted point and replace the predictor's result
by the trapezoidal (Heun) one. The last step (to ``sigma = 0``) is Euler only. So ``Sampler.num_steps``
(scan iterations, one model evaluation each) is ``2 N - 1`` for ``N`` inference steps.
State and scaling are those of ``euler``: ``x = x_vp * sqrt(1 + sigma^2)``.
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

KIND = "heun"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "HeunDiscreteScheduler"

# HeunDiscreteScheduler.__init__ defaults in diffusers 0.42.1 (its beta range is Stable Diffusion's).
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}
CALL_DEFAULTS: dict[str, Any] = {}
IMPLEMENTED = frozenset(DEFAULTS) - {"use_beta_sigmas"}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# Its short names (samplers/catalog.py registers them).
ENTRIES = (SamplerEntry(name="heun", class_name=CLASS_NAME, aliases=("heun2",)),)


@dataclasses.dataclass(frozen=True)
class HeunOptions:
    prediction_type: str
    clip_sample_range: float | None  # None: no clipping of x0
    kind: ClassVar[str] = KIND
    stochastic: ClassVar[bool] = False


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The Heun sampler for a complete, validated ``HeunDiscreteScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    if cfg["use_karras_sigmas"] and cfg["use_exponential_sigmas"]:
        raise UserError("only one of use_karras_sigmas, use_exponential_sigmas can be true")
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)

    alphas_cumprod = train_alphas_cumprod(cfg)
    timesteps = euler_spaced_timesteps(cfg["timestep_spacing"], T, n, int(cfg["steps_offset"]))
    sigmas = train_sigmas(alphas_cumprod)
    log_sigmas = np.log(sigmas)
    sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"]:
        convert = karras_sigmas if cfg["use_karras_sigmas"] else exponential_sigmas
        sigmas = convert(sigmas[0].item(), sigmas[-1].item(), n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    # Inner points twice: [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0] and [t0, t1, t1, ..., t_{N-1}, t_{N-1}].
    sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
    timesteps = np.asarray(timesteps, np.float64)
    timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(np.float32)

    max_sigma = sigmas.max()
    if cfg["timestep_spacing"] in ("linspace", "trailing"):
        init_noise_sigma = max_sigma
    else:
        init_noise_sigma = np.sqrt(max_sigma * max_sigma + np.float32(1.0))
    options = HeunOptions(
        prediction_type=cfg["prediction_type"],
        clip_sample_range=float(cfg["clip_sample_range"]) if cfg["clip_sample"] else None,
    )
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(init_noise_sigma),
        tables={"sigmas": jnp.asarray(sigmas)},
        options=options,
    )


def denoised(x: jax.Array, model_output: jax.Array, sigma: jax.Array, options: HeunOptions) -> jax.Array:
    """The ``x0`` prediction at noise level ``sigma`` (VE scaling), clipped if configured."""
    if options.prediction_type == "epsilon":
        x0 = x - sigma * model_output
    elif options.prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction, with x_vp = x / sqrt(1 + sigma^2)
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    if options.clip_sample_range is not None:
        x0 = jnp.clip(x0, -options.clip_sample_range, options.clip_sample_range)
    return x0


def init_state(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(derivative, dt, x)`` of the last predictor step, for the corrector step that follows it."""
    return jnp.zeros_like(x), jnp.zeros((), jnp.float32), jnp.zeros_like(x)


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    """``x / sqrt(1 + sigma_i^2)``: the VP-scaled input the model was trained on."""
    sigma = sampler.tables["sigmas"][i]
    return x / ((sigma**2 + 1) ** 0.5)


def first_stage(sampler: Sampler, i: jax.Array) -> jax.Array:
    """Whether iteration ``i`` is a step's first stage (its predictor, even ``i``), where loss guidance
    moves ``x`` (``samplers/scan.py``); bool scalar."""
    return i % 2 == 0


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: None
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: an Euler predictor step at even ``i``, the Heun correction at odd ``i``."""
    sigmas, options = sampler.tables["sigmas"], sampler.options

    def predictor():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoised(x, model_output, sigma, options)
        derivative = (x - x0) / sigma
        dt = sigma_next - sigma
        return x + derivative * dt, x0, (derivative, dt, x)

    def corrector():
        # The model saw the predicted point at sigmas[i] (= the predictor's target sigma).
        prev_derivative, dt, x_start = state
        sigma_next = sigmas[i]
        x0 = denoised(x, model_output, sigma_next, options)
        derivative = (prev_derivative + (x - x0) / sigma_next) / 2
        return x_start + derivative * dt, x0, state

    return jax.lax.cond(i % 2 == 0, predictor, corrector)
