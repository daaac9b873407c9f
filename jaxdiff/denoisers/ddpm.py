"""DDPM's parametrisation (Ho et al. 2020; diffusers' training): a discrete VP noise schedule, the network
predicting epsilon, the clean sample or v (Salimans & Ho 2022), optional Min-SNR-gamma weighting.

``level`` is the int32 timestep ``t`` in ``[0, T)``, drawn uniformly; the network sees ``x_t`` and ``t``
unscaled. The target and weights are ``jaxdiff.losses``' functions, so :func:`jaxdiff.denoisers.make_loss`
of this parametrisation computes ``losses.make_diffusion_loss``'s numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import losses
from jaxdiff.denoisers.base import Preconditioning
from jaxdiff.errors import UserError
from jaxdiff.schedules import NoiseSchedule, add_noise

__all__ = ["DDPMParametrization"]


@dataclasses.dataclass(frozen=True)
class DDPMParametrization:
    """A discrete noise schedule and what the network predicts (``jaxdiff.losses.PREDICTION_TYPES``)."""

    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    loss_weighting: str = "none"
    snr_gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.prediction_type not in losses.PREDICTION_TYPES:
            raise UserError(
                f"prediction_type={self.prediction_type!r} is not one of {', '.join(losses.PREDICTION_TYPES)}"
            )
        if self.loss_weighting not in losses.LOSS_WEIGHTINGS:
            raise UserError(
                f"loss_weighting={self.loss_weighting!r} is not one of {', '.join(losses.LOSS_WEIGHTINGS)}"
            )

    def sample_levels(self, key: jax.Array, batch_size: int) -> jax.Array:
        return jax.random.randint(key, (batch_size,), 0, self.schedule.num_train_timesteps)

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jax.random.normal(key, shape, dtype)

    def add_noise(self, x0: jax.Array, noise: jax.Array, level: jax.Array) -> jax.Array:
        return add_noise(self.schedule, x0, noise, level)

    def preconditioning(self, level: jax.Array) -> Preconditioning:
        """From ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``: epsilon ``x0 = (x_t - sqrt(1 - ab) F) / sqrt(ab)``,
        sample ``x0 = F``, v ``x0 = sqrt(ab) x_t - sqrt(1 - ab) F``."""
        ab = self.schedule.alphas_cumprod[level]
        one = jnp.ones_like(ab)
        if self.prediction_type == "epsilon":
            c_skip, c_out = 1 / jnp.sqrt(ab), -jnp.sqrt(1 - ab) / jnp.sqrt(ab)
        elif self.prediction_type == "sample":
            c_skip, c_out = jnp.zeros_like(ab), one
        else:
            c_skip, c_out = jnp.sqrt(ab), -jnp.sqrt(1 - ab)
        return Preconditioning(c_skip=c_skip, c_out=c_out, c_in=one, c_noise=level)

    def network_input(self, x: jax.Array, level: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, level  # c_in = 1, c_noise = t

    def training_target(self, x0: jax.Array, noise: jax.Array, level: jax.Array, x_t: jax.Array) -> jax.Array:
        return losses.training_target(self.schedule, x0, noise, level, self.prediction_type)

    def loss_weight(self, level: jax.Array) -> jax.Array:
        return losses.loss_weights(
            self.schedule, level, self.prediction_type, self.loss_weighting, self.snr_gamma
        )
