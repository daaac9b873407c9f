"""The ``Sampler`` pytree shared by all samplers, and the per-step noise they draw."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Sampler:
    """A configured sampler: per-step tables (arrays) plus static options. A pytree; jit-friendly.

    Attributes:
      timesteps: ``[N]`` the values diffusers' ``scheduler.timesteps`` holds after
        ``set_timesteps(num_inference_steps)``, in sampling order: int32 for DDPM, DDIM, DPM-Solver and
        UniPC, float32 for the Euler-type, flow-matching and EDM samplers (fractional; EDM's are
        ``0.25 log sigma``). These are the ``t`` the model sees.
      init_noise_sigma: float32 scalar; ``sample`` multiplies the standard normal ``x_T`` by it.
      tables: per-step float32 schedule values the update rule reads (see each sampler module),
        e.g. ``alpha_bar`` / ``alpha_bar_prev`` ``[N]`` (DDPM, DDIM) or ``sigmas`` ``[N + 1]``
        (DPM-Solver, Euler), and ``order`` ``[N]`` int32 (DPM-Solver).
      options: the sampler's static, hashable options (a frozen dataclass; its ``kind`` names the
        sampler module's step function: "ddpm", "ddim", "dpmsolver++", "euler", "heun", ...; see
        ``samplers/catalog.py``).
    """

    timesteps: jax.Array
    init_noise_sigma: jax.Array
    tables: dict[str, jax.Array]
    options: Any = struct.field(pytree_node=False)

    @property
    def kind(self) -> str:
        return self.options.kind

    @property
    def num_steps(self) -> int:
        """Scan iterations of ``sample``: the length of diffusers' ``timesteps`` (one model call each)."""
        return self.timesteps.shape[0]

    @property
    def num_model_evaluations(self) -> int:
        """Model calls per sample (NFE): ``num_steps``. For ``num_inference_steps = n`` that is ``n``, except
        for Heun (``2 n - 1``: two calls per step but the last, as in diffusers' loop)."""
        return self.num_steps

    @property
    def stochastic(self) -> bool:
        """Whether the update rule draws fresh noise at each step (DDPM, DDIM with ``eta > 0``)."""
        return self.options.stochastic


def step_noise(key: jax.Array, step: int | jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """The standard normal noise a stochastic sampler adds at step ``step`` (0-based, sampling order).

    ``normal(fold_in(key, step), shape)``: independent of how the batch is sharded, and exposed so that
    tests can hand the very same noise to diffusers.
    """
    return jax.random.normal(jax.random.fold_in(key, step), shape, dtype)
