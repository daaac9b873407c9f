"""The course's "from scratch" objective (``jaxdiff.corruption``) as a parametrisation.

``level`` is the corruption amount ``a ~ U[0, 1]``, ``x_a = (1 - a) x0 + a u`` with uniform noise
``u ~ U[0, 1)``, and the network (which gets timestep 0: it must read the amount from the image) predicts
the clean image: ``D(x, a) = F(x, 0)`` (``c_skip = 0``, ``c_out = c_in = 1``, ``c_noise = 0``). The loss is
the course's ``nn.MSELoss()``, a mean over all elements (``corruption.make_from_scratch_loss``), which
:meth:`FromScratchParametrization.make_loss` keeps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import corruption
from jaxdiff.denoisers.base import Preconditioning
from jaxdiff.losses import TrainingLoss

__all__ = ["FromScratchParametrization"]


@dataclasses.dataclass(frozen=True)
class FromScratchParametrization:
    """The corruption process of ``jaxdiff.corruption``."""

    def sample_levels(self, key: jax.Array, batch_size: int) -> jax.Array:
        return jax.random.uniform(key, (batch_size,), jnp.float32)

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return corruption.from_scratch_noise(key, shape, jnp.float32)

    def add_noise(self, x0: jax.Array, noise: jax.Array, level: jax.Array) -> jax.Array:
        return corruption.corrupt(x0, level, noise)

    def preconditioning(self, level: jax.Array) -> Preconditioning:
        one = jnp.ones(jnp.shape(level), jnp.float32)
        return Preconditioning(
            c_skip=jnp.zeros_like(one), c_out=one, c_in=one, c_noise=jnp.zeros(jnp.shape(level), jnp.int32)
        )

    def network_input(self, x: jax.Array, level: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, jnp.zeros(jnp.shape(level), jnp.int32)

    def training_target(self, x0: jax.Array, noise: jax.Array, level: jax.Array, x_t: jax.Array) -> jax.Array:
        return x0

    def loss_weight(self, level: jax.Array) -> jax.Array:
        return jnp.ones(jnp.shape(level), jnp.float32)

    def make_loss(self) -> TrainingLoss:
        """The course's loss exactly (its reduction over all elements at once)."""
        return corruption.make_from_scratch_loss()
