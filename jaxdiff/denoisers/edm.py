"""EDM's parametrisation (Karras et al. 2022, "Elucidating the design space", Table 1, ``EDMPrecond``).

``x = x0 + sigma n`` (variance exploding), and the network ``F`` is wrapped as

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4,

with ``sd = sigma_data``. Training draws ``log sigma ~ N(P_mean, P_std^2)`` and weights the denoiser's
error by ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``: in the network's output space the target is
``(x0 - c_skip x) / c_out`` and the weight ``lambda c_out^2`` (one, up to rounding).

These are diffusers' ``EDMEulerScheduler`` conventions: its ``precondition_inputs`` (``c_in``),
``precondition_noise`` (the timestep the UNet gets, ``0.25 log sigma``) and ``precondition_outputs``
(``prediction_type="epsilon"`` is the ``c_out`` above, ``"v_prediction"`` negates it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.denoisers.base import Preconditioning, per_example
from jaxdiff.errors import UserError

__all__ = ["PREDICTION_TYPES", "EDMParametrization", "edm_preconditioning"]

PREDICTION_TYPES = ("epsilon", "v_prediction")


def edm_preconditioning(
    sigma: jax.Array, sigma_data: float, prediction_type: str = "epsilon"
) -> Preconditioning:
    """The coefficients at noise level ``sigma`` (float32 ``[B]`` or a scalar); see the module docstring."""
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    c_out = sigma * sigma_data / jnp.sqrt(total)
    return Preconditioning(
        c_skip=sigma_data**2 / total,
        c_out=-c_out if prediction_type == "v_prediction" else c_out,
        c_in=1 / jnp.sqrt(total),
        c_noise=jnp.log(sigma) / 4,
    )


@dataclasses.dataclass(frozen=True)
class EDMParametrization:
    """EDM's preconditioning and training noise levels (defaults: the paper's CIFAR-10 values)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"prediction_type={self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)} "
                "for EDM"
            )

    def sample_levels(self, key: jax.Array, batch_size: int) -> jax.Array:
        """``sigma = exp(P_mean + P_std n)``, ``n ~ N(0, 1)``: float32 ``[B]``."""
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (batch_size,), jnp.float32))

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jax.random.normal(key, shape, dtype)

    def add_noise(self, x0: jax.Array, noise: jax.Array, level: jax.Array) -> jax.Array:
        return x0 + per_example(level, x0.ndim).astype(x0.dtype) * noise

    def preconditioning(self, level: jax.Array) -> Preconditioning:
        return edm_preconditioning(level, self.sigma_data, self.prediction_type)

    def network_input(self, x: jax.Array, level: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.preconditioning(level)
        return per_example(c.c_in, x.ndim) * x, c.c_noise

    def training_target(self, x0: jax.Array, noise: jax.Array, level: jax.Array, x_t: jax.Array) -> jax.Array:
        c = self.preconditioning(level)
        return (x0 - per_example(c.c_skip, x0.ndim) * x_t) / per_example(c.c_out, x0.ndim)

    def denoiser_weight(self, level: jax.Array) -> jax.Array:
        """EDM's ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` on ``||D - x0||^2``, float32 ``[B]``."""
        return (level**2 + self.sigma_data**2) / (level * self.sigma_data) ** 2

    def loss_weight(self, level: jax.Array) -> jax.Array:
        return self.denoiser_weight(level) * self.preconditioning(level).c_out ** 2
