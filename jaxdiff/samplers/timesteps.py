"""Host-side (NumPy) construction of the inference timesteps and sigmas, as diffusers' ``set_timesteps``.

"leading", "trailing" and "linspace" are the spacings of Lin et al. 2023 (Table 2). Every function here
reproduces the NumPy arithmetic (and dtypes) of the corresponding diffusers 0.42 code path, so that the
resulting timesteps are equal to diffusers' exactly.
"""

from __future__ import annotations

import math

import numpy as np

from jaxdiff.errors import UserError

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def _check_spacing(timestep_spacing: str) -> None:
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise UserError(f"timestep_spacing={timestep_spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")


def spaced_timesteps(
    timestep_spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """int64 descending timesteps of ``DDPMScheduler`` / ``DDIMScheduler.set_timesteps(n)``."""
    _check_spacing(timestep_spacing)
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    ratio = T / n
    return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1


def dpm_spaced_timesteps(
    timestep_spacing: str,
    num_train_timesteps: int,
    num_inference_steps: int,
    last_timestep: int,
    steps_offset: int = 0,
) -> np.ndarray:
    """int64 timesteps of ``DPMSolverMultistepScheduler.set_timesteps(n)`` (n + 1 points, the last dropped).

    ``last_timestep`` is ``T`` minus the number of steps clipped by ``lambda_min_clipped``.
    """
    _check_spacing(timestep_spacing)
    n = num_inference_steps
    if timestep_spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    ratio = num_train_timesteps / n
    return np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1


def euler_spaced_timesteps(
    timestep_spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0
) -> np.ndarray:
    """float32 timesteps of ``EulerDiscreteScheduler.set_timesteps(n)`` (before any sigma conversion)."""
    _check_spacing(timestep_spacing)
    T, n = num_train_timesteps, num_inference_steps
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if timestep_spacing == "leading":
        ratio = T // n
        timesteps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        return timesteps + np.float32(steps_offset)
    ratio = T / n
    return np.arange(T, 0, -ratio).round().copy().astype(np.float32) - np.float32(1)


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """float32 ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` over the training steps (VE view)."""
    ac = alphas_cumprod.astype(np.float32)
    return np.sqrt((np.float32(1.0) - ac) / ac).astype(np.float32)


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps whose (log-linearly interpolated) training sigma equals ``sigmas``.

    Args:
      sigmas: ``[N]`` target sigmas (float64).
      log_sigmas: float32 ``[T]`` log training sigmas, increasing with the timestep.
    """
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return (1 - w) * low_idx + w * high_idx


def karras_sigmas(
    sigma_max: float, sigma_min: float, num_inference_steps: int, rho: float = 7.0
) -> np.ndarray:
    """Karras et al. 2022, eq. 5, float64.

    ``sigma_i = (s_max^(1/rho) + i / (n - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho``.
    """
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_max: float, sigma_min: float, num_inference_steps: int) -> np.ndarray:
    """Sigmas evenly spaced in log sigma from ``sigma_max`` to ``sigma_min``, float64."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def lu_lambdas(lambda_max: float, lambda_min: float, num_inference_steps: int) -> np.ndarray:
    """Log-SNR-uniform spacing of Lu et al. 2022 (DPM-Solver), float64."""
    ramp = np.linspace(0, 1, num_inference_steps)
    return lambda_max + ramp * (lambda_min - lambda_max)
