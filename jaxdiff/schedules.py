"""Noise schedules of the forward (noising) process, as diffusers defines them.

A schedule is the table of ``betas`` over ``T = num_train_timesteps`` discrete steps and what follows
from it: ``alphas = 1 - betas`` and ``alphas_cumprod = cumprod(alphas)`` (written ``alpha_bar_t`` in
Ho et al. 2020). The forward process is ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.

The tables are built on the host with NumPy, following the dtypes diffusers 0.42 uses: where diffusers
holds a float32 torch tensor we round to float32, and each operation is computed in float64 and then
rounded, so every entry is within a float32 rounding of diffusers' (torch's own float32 ``linspace`` and
``sigmoid`` are themselves only accurate to about one unit in the last place).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdiff.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")

# The keys of a diffusers scheduler config that define the noise schedule (the rest configure sampling).
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)


@struct.dataclass
class NoiseSchedule:
    """The discrete forward process ``q(x_t | x_0)``, a pytree usable inside ``jax.jit``.

    Attributes:
      betas: float32 ``[T]``, the per-step noise variances.
      alphas: float32 ``[T]``, ``1 - betas``.
      alphas_cumprod: float32 ``[T]``, ``alpha_bar_t = prod_{s <= t} alphas_s``.
      num_train_timesteps: ``T`` (static).
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    num_train_timesteps: int = struct.field(pytree_node=False)


def _linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num, dtype=float32)``, correctly rounded from float64."""
    return np.linspace(start, end, num, dtype=np.float64).astype(np.float32)


def _betas_for_alpha_bar(num: int, alpha_bar_fn, max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise a continuous ``alpha_bar(t)``, t in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    betas = [min(1.0 - alpha_bar_fn((i + 1) / num) / alpha_bar_fn(i / num), max_beta) for i in range(num)]
    return np.asarray(betas, dtype=np.float64).astype(np.float32)


def _cosine_alpha_bar(t: float) -> float:
    # "squaredcos_cap_v2", the GLIDE / improved-DDPM cosine schedule with offset s = 0.008.
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(t: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def cumprod_f32(alphas: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 tensor on CPU: accumulated in float64, stored as float32."""
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale float32 betas so that the last step has zero SNR (Lin et al. 2023, Algorithm 1).

    ``sqrt(alpha_bar)`` is shifted so that its last value is 0 and scaled so that its first value is
    unchanged; the betas are then read back from the new ``alpha_bar``. float32 throughout, as diffusers.
    """
    f32 = np.float32
    alphas_bar_sqrt = np.sqrt(cumprod_f32(f32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (f32(1.0) - alphas).astype(np.float32)


def make_betas(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """The float32 NumPy ``betas [T]`` of a diffusers schedule (host side; see ``make_schedule``)."""
    if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 2:
        raise UserError(f"num_train_timesteps={num_train_timesteps!r} must be an integer >= 2")
    num = int(num_train_timesteps)
    f32 = np.float32
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64).astype(np.float32).reshape(-1)
        if betas.shape[0] != num:
            raise UserError(
                f"trained_betas has {betas.shape[0]} values but num_train_timesteps={num}; they must agree"
            )
    elif beta_schedule == "linear":
        betas = _linspace_f32(beta_start, beta_end, num)
    elif beta_schedule == "scaled_linear":
        # Latent-diffusion schedule: linear in sqrt(beta), squared in float32.
        root = _linspace_f32(beta_start**0.5, beta_end**0.5, num)
        betas = root * root
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(num, _cosine_alpha_bar)
    elif beta_schedule == "laplace":
        betas = _betas_for_alpha_bar(num, _laplace_alpha_bar)
    elif beta_schedule == "sigmoid":
        # GeoDiff: sigmoid over linspace(-6, 6), affinely mapped onto [beta_start, beta_end].
        ramp = _linspace_f32(-6.0, 6.0, num).astype(np.float64)
        sig = (1.0 / (1.0 + np.exp(-ramp))).astype(np.float32)
        betas = sig * f32(beta_end - beta_start) + f32(beta_start)
    else:
        raise UserError(f"beta_schedule={beta_schedule!r} is not one of {', '.join(BETA_SCHEDULES)}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas.astype(np.float32)


def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    rescale_betas_zero_snr: bool = False,
) -> NoiseSchedule:
    """The noise schedule diffusers builds from these config values (``DDPMScheduler.__init__``).

    Args:
      num_train_timesteps: number of training steps ``T``.
      beta_schedule: one of ``BETA_SCHEDULES``; ignored when ``trained_betas`` is given.
      beta_start, beta_end: the first and last beta (linear, scaled_linear, sigmoid).
      trained_betas: explicit ``[T]`` betas.
      rescale_betas_zero_snr: rescale to zero terminal SNR (Lin et al. 2023).

    Returns:
      A ``NoiseSchedule`` with float32 ``[T]`` tables.
    """
    betas = make_betas(
        num_train_timesteps, beta_schedule, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
    )
    alphas = np.float32(1.0) - betas
    return NoiseSchedule(
        betas=jnp.asarray(betas),
        alphas=jnp.asarray(alphas),
        alphas_cumprod=jnp.asarray(cumprod_f32(alphas)),
        num_train_timesteps=int(num_train_timesteps),
    )


def schedule_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``make_schedule`` arguments present in a diffusers-style config mapping (other keys dropped)."""
    return {key: config[key] for key in SCHEDULE_KEYS if key in config}


def schedule_from_config(diffusion_config: Mapping[str, Any]) -> NoiseSchedule:
    """``make_schedule`` from a diffusers-style dict or ConfigDict; other keys are ignored."""
    return make_schedule(**schedule_kwargs(diffusion_config))


def _expand(values: jax.Array, ndim: int) -> jax.Array:
    """``[B]`` -> ``[B, 1, ..., 1]`` with ``ndim`` dimensions, to broadcast against ``[B, ...]``."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _sqrt_alphas(schedule: NoiseSchedule, t: jax.Array, dtype, ndim: int) -> tuple[jax.Array, jax.Array]:
    alpha_bar = schedule.alphas_cumprod.astype(dtype)[jnp.asarray(t)]
    return _expand(jnp.sqrt(alpha_bar), ndim), _expand(jnp.sqrt(1 - alpha_bar), ndim)


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Sample ``q(x_t | x_0)`` (Ho et al. 2020, eq. 4): ``sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``.

    Args:
      schedule: the noise schedule.
      x0: clean data ``[B, ...]`` (e.g. NHWC images), float.
      noise: standard normal noise, ``x0``'s shape.
      t: int timesteps ``[B]`` in ``[0, T)``.

    Returns:
      ``x_t``, ``x0``'s shape and dtype.
    """
    sqrt_ab, sqrt_one_minus_ab = _sqrt_alphas(schedule, t, x0.dtype, x0.ndim)
    return sqrt_ab * x0 + sqrt_one_minus_ab * noise


def get_velocity(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """The v-prediction target ``sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0`` (Salimans & Ho 2022).

    Shapes as ``add_noise``.
    """
    sqrt_ab, sqrt_one_minus_ab = _sqrt_alphas(schedule, t, x0.dtype, x0.ndim)
    return sqrt_ab * noise - sqrt_one_minus_ab * x0


def snr(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` at int timesteps ``t [B]``, float32 ``[B]``.

    Computed as diffusers' ``training_utils.compute_snr``: ``(sqrt(alpha_bar) / sqrt(1 - alpha_bar))**2``.
    """
    alpha_bar = schedule.alphas_cumprod[jnp.asarray(t)]
    return jnp.square(jnp.sqrt(alpha_bar) / jnp.sqrt(1.0 - alpha_bar))
