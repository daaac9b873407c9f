"""The train state: everything a resumed run needs besides the data iterator, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "create_train_state"]


@flax.struct.dataclass
class TrainState:
    """A pytree of arrays (orbax, ``jax.jit`` and ``jax.tree`` work on it directly).

    Attributes:
      step: int32 scalar, the number of optimizer updates done.
      params: the model's parameters (``nnx.State`` from ``jaxdiff.models.functional``), float32.
      opt_state: the optax state of ``params``.
      ema_params: the exponential moving average of ``params`` (same structure and dtype).
      rng: the run's base PRNG key, raw ``uint32[2]``. It never changes: the key of step ``s`` is
        ``fold_in(rng, s)``, one key for the whole global batch, so results do not depend on the device
        count or on where a run was resumed.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array


def create_train_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh state at step 0: the EMA starts as a copy of ``params`` (like ``EMAModel``'s shadow)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        rng=jnp.asarray(rng, jnp.uint32),
    )
