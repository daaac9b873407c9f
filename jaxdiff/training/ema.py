"""Exponential moving average of the parameters, with the semantics of diffusers' ``EMAModel``.

``EMAModel.step()`` counts its calls (``optimization_step``, 1 after the first optimizer update) and uses

    s = max(0, optimization_step - update_after_step - 1)
    decay = 0                                           if s == 0
          = 1 - (1 + s / inv_gamma) ** -power           with use_ema_warmup
          = (1 + s) / (10 + s)                          without it
    decay = max(min(decay, max_decay), min_decay)
    ema   = ema - (1 - decay) * (ema - params)

so the first update copies the parameters. Here ``optimization_step`` is the train state's step *after*
the update (``state.step + 1``), which makes the EMA a pure function of the step: exact on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ema_decay", "ema_update", "make_ema_update"]


def ema_decay(
    optimization_step: jax.Array | int,
    *,
    max_decay: float = 0.9999,
    min_decay: float = 0.0,
    update_after_step: int = 0,
    use_ema_warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
) -> jax.Array:
    """The decay of update number ``optimization_step`` (1-based), float32 scalar (see module docstring)."""
    s = jnp.maximum(0, jnp.asarray(optimization_step, jnp.int32) - update_after_step - 1).astype(jnp.float32)
    if use_ema_warmup:
        decay = 1.0 - (1.0 + s / inv_gamma) ** (-power)
    else:
        decay = (1.0 + s) / (10.0 + s)
    decay = jnp.maximum(jnp.minimum(decay, max_decay), min_decay)
    return jnp.where(s <= 0, 0.0, decay).astype(jnp.float32)


def ema_update(ema_params: Any, params: Any, decay: jax.Array) -> Any:
    """``ema - (1 - decay) * (ema - params)`` leaf by leaf, in each EMA leaf's dtype."""
    one_minus = 1.0 - decay
    return jax.tree.map(lambda e, p: e - (one_minus * (e - p)).astype(e.dtype), ema_params, params)


def make_ema_update(
    train_config: Mapping[str, Any],
) -> Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]]:
    """``update(ema_params, params, optimization_step) -> (new_ema_params, decay)`` from a ``train`` section.

    Keys: ``ema_decay`` (the maximum decay), ``ema_min_decay``, ``ema_update_after_step``,
    ``ema_use_warmup``, ``ema_inv_gamma``, ``ema_power``.
    """
    kwargs = dict(
        max_decay=float(train_config["ema_decay"]),
        min_decay=float(train_config["ema_min_decay"]),
        update_after_step=int(train_config["ema_update_after_step"]),
        use_ema_warmup=bool(train_config["ema_use_warmup"]),
        inv_gamma=float(train_config["ema_inv_gamma"]),
        power=float(train_config["ema_power"]),
    )

    def update(ema_params: Any, params: Any, optimization_step: jax.Array) -> tuple[Any, jax.Array]:
        decay = ema_decay(optimization_step, **kwargs)
        return ema_update(ema_params, params, decay), decay

    return update
