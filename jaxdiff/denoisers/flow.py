"""Flow matching / rectified flow (Lipman et al. 2023, Liu et al. 2023; SD3's choices, Esser et al. 2024).

``x_s = (1 - s) x0 + s n`` for a time ``s`` in ``[0, 1]`` (the ``sigma`` of diffusers'
``FlowMatchEulerDiscreteScheduler``), and the network predicts the velocity ``u = n - x0``, so
``D(x, s) = x - s F`` (``c_skip = 1``, ``c_out = -s``, ``c_in = 1``). The network's time input is
``s * num_train_timesteps`` (float32), the ``timesteps`` that scheduler feeds it.

Training times: ``"uniform"`` ``s ~ U[0, 1)``, or ``"logit_normal"`` ``s = sigmoid(m + std n)``
(SD3's default ``m = 0, std = 1``); then ``shift`` warps them as ``shift s / (1 + (shift - 1) s)``, the
same warp the scheduler applies to its sigmas. The loss is the plain mean squared velocity error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.denoisers.base import Preconditioning, per_example
from jaxdiff.errors import UserError

__all__ = ["TIME_SAMPLINGS", "FlowParametrization", "shift_times"]

TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_times(s: jax.Array, shift: float) -> jax.Array:
    """``shift s / (1 + (shift - 1) s)``: more time at high noise for ``shift > 1``."""
    return shift * s / (1 + (shift - 1) * s)


@dataclasses.dataclass(frozen=True)
class FlowParametrization:
    """The linear (rectified-flow) path with a velocity target."""

    num_train_timesteps: int = 1000
    time_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise UserError(f"time_sampling={self.time_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}")

    def sample_levels(self, key: jax.Array, batch_size: int) -> jax.Array:
        """The times ``s`` float32 ``[B]`` (module docstring)."""
        if self.time_sampling == "uniform":
            s = jax.random.uniform(key, (batch_size,), jnp.float32)
        else:
            n = jax.random.normal(key, (batch_size,), jnp.float32)
            s = jax.nn.sigmoid(self.logit_mean + self.logit_std * n)
        return shift_times(s, self.shift) if self.shift != 1.0 else s

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jax.random.normal(key, shape, dtype)

    def add_noise(self, x0: jax.Array, noise: jax.Array, level: jax.Array) -> jax.Array:
        s = per_example(level, x0.ndim).astype(x0.dtype)
        return (1 - s) * x0 + s * noise

    def preconditioning(self, level: jax.Array) -> Preconditioning:
        s = jnp.asarray(level, jnp.float32)
        one = jnp.ones_like(s)
        return Preconditioning(c_skip=one, c_out=-s, c_in=one, c_noise=s * self.num_train_timesteps)

    def network_input(self, x: jax.Array, level: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, jnp.asarray(level, jnp.float32) * self.num_train_timesteps

    def training_target(self, x0: jax.Array, noise: jax.Array, level: jax.Array, x_t: jax.Array) -> jax.Array:
        return noise - x0

    def loss_weight(self, level: jax.Array) -> jax.Array:
        return jnp.ones(jnp.shape(level), jnp.float32)
