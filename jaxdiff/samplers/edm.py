"""What diffusers' two EDM schedulers share (Karras et al. 2022, "Elucidating the Design Space of Diffusion-
Based Generative Models", Table 1): the sigma schedules and the preconditioning of the model's input, noise
level and output, tabulated per step on the host (NumPy float32, in diffusers' order of operations).

The data path is ``x = x0 + sigma n`` (variance exploding). The network ``F`` sees
``c_in(sigma) x`` and ``c_noise(sigma) = 0.25 log(sigma)`` (its timestep: diffusers' ``timesteps`` are
``precondition_noise(sigmas)``), and the denoiser is ``D(x) = c_skip(sigma) x + c_out(sigma) F`` with
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``, ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)`` and
``c_out = +-sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (``+`` for "epsilon", ``-`` for
"v_prediction").
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import check_choice
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.timesteps import karras_sigmas

# The __init__ keys (and defaults, diffusers 0.42.1) both EDM schedulers have.
EDM_DEFAULTS: dict[str, Any] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "sigma_schedule": "karras",
    "num_train_timesteps": 1000,  # sizes only diffusers' training table; sampling does not read it
    "prediction_type": "epsilon",
    "rho": 7.0,
    "final_sigmas_type": "zero",
}
SIGMA_SCHEDULES = ("karras", "exponential")
PREDICTION_TYPES = ("epsilon", "v_prediction")  # diffusers' precondition_outputs has no "sample"
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")

_F32 = np.float32


def _positive(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise UserError(f"{key}={value!r} must be a positive number")
    return float(value)


def check_config(cfg: Mapping[str, Any]) -> None:
    """UserError naming the first bad value among the keys of ``EDM_DEFAULTS``."""
    num_train_timesteps = cfg["num_train_timesteps"]
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, numbers.Integral):
        raise UserError(f"num_train_timesteps={num_train_timesteps!r} must be a positive integer")
    _positive(cfg, "num_train_timesteps")
    sigma_min, sigma_max = _positive(cfg, "sigma_min"), _positive(cfg, "sigma_max")
    if not sigma_min < sigma_max:
        raise UserError(f"sigma_min={cfg['sigma_min']!r} must be below sigma_max={cfg['sigma_max']!r}")
    _positive(cfg, "sigma_data")
    _positive(cfg, "rho")
    check_choice(cfg, "sigma_schedule", SIGMA_SCHEDULES)
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    check_choice(cfg, "final_sigmas_type", FINAL_SIGMAS_TYPES)


def linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """float32 ``[num]`` evenly spaced values exactly as torch's float32 ``linspace`` on CPU computes them.

    torch steps by ``(end - start) / (num - 1)`` in float32 from ``start`` for the first half and back from
    ``end`` for the second, each value one fused multiply-add (emulated here by float64 arithmetic and a
    single rounding); NumPy's float64 linspace can differ from it by an ulp, which EDM's ``rho = 7`` power
    turns into a relative difference of ~1e-6 in sigma.
    """
    start32, end32 = _F32(start), _F32(end)
    if num == 1:
        return np.array([start32], _F32)
    step = np.float64((end32 - start32) / _F32(num - 1))
    idx = np.arange(num)
    from_start = np.float64(start32) + step * idx
    from_end = np.float64(end32) - step * (num - 1 - idx)
    return np.where(idx < num // 2, from_start, from_end).astype(_F32)


def inference_sigmas(cfg: Mapping[str, Any], num_inference_steps: int, float64_ramp: bool) -> np.ndarray:
    """float32 ``[n]`` decreasing sigmas from ``sigma_max`` to ``sigma_min`` (without the final one).

    "karras": ``(s_max^(1/rho) + r (s_min^(1/rho) - s_max^(1/rho)))^rho`` for ``r`` evenly spaced in
    ``[0, 1]``, computed in float64 (``float64_ramp``: EDM Euler) or in float32 (EDM DPM-Solver, as its
    float32 ramp makes torch do). "exponential": evenly spaced in ``log sigma`` (float32).
    """
    n, sigma_min, sigma_max = num_inference_steps, float(cfg["sigma_min"]), float(cfg["sigma_max"])
    if cfg["sigma_schedule"] == "exponential":
        return np.exp(linspace_f32(math.log(sigma_min), math.log(sigma_max), n))[::-1].copy()
    rho = float(cfg["rho"])
    if float64_ramp:
        return karras_sigmas(sigma_max, sigma_min, n, rho).astype(_F32)
    # torch multiplies a float32 tensor by a Python float in float32 (the scalar rounded first).
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ramp = linspace_f32(0.0, 1.0, n)
    return (_F32(max_inv_rho) + ramp * _F32(min_inv_rho - max_inv_rho)) ** _F32(rho)


def precondition_noise(sigmas: np.ndarray) -> np.ndarray:
    """float32 ``c_noise = 0.25 log(sigma)``: the timesteps the model sees."""
    return (_F32(0.25) * np.log(sigmas.astype(_F32))).astype(_F32)


def input_scale(sigmas: np.ndarray, sigma_data: float) -> np.ndarray:
    """float32 ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``."""
    sigmas = sigmas.astype(_F32)
    return (_F32(1.0) / np.sqrt(sigmas * sigmas + _F32(sigma_data**2))).astype(_F32)


def output_scales(
    sigmas: np.ndarray, sigma_data: float, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(c_skip, c_out)`` so that the denoised sample is ``c_skip x + c_out F(...)``."""
    sigmas = sigmas.astype(_F32)
    variance = sigmas * sigmas + _F32(sigma_data**2)
    c_skip = _F32(sigma_data**2) / variance
    c_out = sigmas * _F32(sigma_data) / np.sqrt(variance)
    if prediction_type == "v_prediction":
        c_out = -c_out
    return c_skip.astype(_F32), c_out.astype(_F32)


def init_noise_sigma(cfg: Mapping[str, Any]) -> np.float32:
    """diffusers' ``init_noise_sigma``: ``sqrt(sigma_max^2 + 1)`` (not ``sigma_max``), float32."""
    return _F32((float(cfg["sigma_max"]) ** 2 + 1) ** 0.5)


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    """``c_in(sigma_i) x``: diffusers' ``precondition_inputs``, both EDM schedulers' ``scale_model_input``."""
    return x * sampler.tables["c_in"][i]
