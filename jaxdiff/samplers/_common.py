"""Helpers shared by the sampler modules (host-side table building and config checks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.schedules import cumprod_f32, make_betas, schedule_kwargs

# __init__ defaults that diffusers' DDPM, DDIM, DPM-Solver and Euler schedulers share (0.42.1): the
# training noise schedule, and the x_0 thresholding options (not Euler's).
SCHEDULE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
THRESHOLDING_DEFAULTS: dict[str, Any] = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


def as_dict(config: Any, what: str) -> dict[str, Any]:
    """A plain dict of a mapping or an ``ml_collections.ConfigDict``; UserError naming ``what`` otherwise."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise UserError(f"{what} must be a mapping, got {type(config).__name__}")
    return dict(config)


def train_alphas_cumprod(cfg: Mapping[str, Any]) -> np.ndarray:
    """float32 ``alpha_bar [T]`` of the training schedule a scheduler config describes."""
    betas = make_betas(**schedule_kwargs(cfg))
    return cumprod_f32(np.float32(1.0) - betas)


def check_choice(cfg: Mapping[str, Any], key: str, allowed: tuple[Any, ...]) -> None:
    """UserError unless ``cfg[key]`` is one of ``allowed``."""
    if cfg[key] not in allowed:
        raise UserError(f"{key}={cfg[key]!r} is not one of {', '.join(repr(a) for a in allowed)}")


def check_num_steps(num_inference_steps: Any, num_train_timesteps: int, *, at_most_train: bool) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise UserError(f"num_inference_steps={num_inference_steps!r} must be a positive integer")
    if num_inference_steps < 1 or (at_most_train and num_inference_steps > num_train_timesteps):
        limit = f" and at most num_train_timesteps={num_train_timesteps}" if at_most_train else ""
        raise UserError(f"num_inference_steps={num_inference_steps} must be at least 1{limit}")
    return int(num_inference_steps)


def check_timesteps_in_range(timesteps: np.ndarray, num_train_timesteps: int) -> None:
    bad = timesteps[(timesteps < 0) | (timesteps >= num_train_timesteps)]
    if bad.size:
        raise UserError(
            f"timestep {int(bad[0])} falls outside [0, {num_train_timesteps}) "
            "(lower steps_offset or num_inference_steps)"
        )
