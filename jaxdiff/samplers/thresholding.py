"""Clipping and dynamic thresholding of the predicted ``x_0``, and conversions between model outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclasses.dataclass(frozen=True)
class X0Clipping:
    """How the predicted ``x_0`` is bounded before it is used (static; hashable).

    ``thresholding`` (dynamic thresholding) takes precedence over ``clip_sample``, as in diffusers.
    """

    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> X0Clipping:
        """From a scheduler config: its values of these keys (a scheduler without ``clip_sample``, like
        DPM-Solver, keeps the defaults for the keys it lacks)."""
        # Each value cast to its field's type (that of the default): bool or float.
        fields = [f for f in dataclasses.fields(cls) if f.name in cfg]
        return cls(**{f.name: type(f.default)(cfg[f.name]) for f in fields})


def dynamic_threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, Sec. 2.3).

    Per sample, ``s`` is the ``ratio`` quantile of ``|x0|`` over all of its pixels and channels, clamped
    to ``[1, max_value]``; ``x0`` is clipped to ``[-s, s]`` and divided by ``s``.

    Args:
      x0: float ``[B, ...]``.
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = jnp.quantile(jnp.abs(flat), ratio, axis=1)
    s = jnp.clip(s, 1.0, max_value)[:, None]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)


def clip_x0(x0: jax.Array, clipping: X0Clipping) -> jax.Array:
    """Apply ``clipping`` (dynamic thresholding, or a clip to ``+-clip_sample_range``, or nothing)."""
    if clipping.thresholding:
        return dynamic_threshold(x0, clipping.dynamic_thresholding_ratio, clipping.sample_max_value)
    if clipping.clip_sample:
        return jnp.clip(x0, -clipping.clip_sample_range, clipping.clip_sample_range)
    return x0


def predicted_x0_and_eps(
    model_output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """``(x_0, eps)`` implied by a model output at ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps``.

    epsilon: Ho et al. 2020 eq. 15; sample: the output is ``x_0``; v_prediction (Salimans & Ho 2022):
    ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0``, so ``x_0 = sqrt(alpha_bar) x_t - sqrt(1 -
    alpha_bar) v``.
    """
    beta_bar = 1 - alpha_bar
    if prediction_type == "epsilon":
        return (x_t - beta_bar**0.5 * model_output) / alpha_bar**0.5, model_output
    if prediction_type == "sample":
        return model_output, (x_t - alpha_bar**0.5 * model_output) / beta_bar**0.5
    if prediction_type == "v_prediction":
        x0 = alpha_bar**0.5 * x_t - beta_bar**0.5 * model_output
        return x0, alpha_bar**0.5 * model_output + beta_bar**0.5 * x_t
    raise UserError(f"prediction_type={prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
