"""The parametrisation interface: a network wrapped into a denoiser, and the loss that trains it.

In the spirit of EDM's ``VPPrecond`` / ``EDMPrecond`` (Karras et al. 2022, Table 1), a
:class:`Parametrization` says, for a per-example noise level ``level`` (a timestep, a sigma, a flow time):

- how training draws the levels and corrupts clean data (``sample_levels``, ``draw_noise``, ``add_noise``);
- the preconditioning ``c_skip, c_out, c_in, c_noise`` (:class:`Preconditioning`) that turns the raw
  network ``F(x, t)`` into the denoiser ``D(x, level) = c_skip x + c_out F(c_in x, c_noise)``
  (:func:`denoise`): the samplers read the network's output the same way;
- the network's training target and the weight of its squared error (``training_target``,
  ``loss_weight``), both in the network's output space. A denoiser-space weight ``lambda`` (EDM's) is
  ``lambda c_out^2`` there, since ``||D - x0||^2 = c_out^2 ||F - (x0 - c_skip x) / c_out||^2``.

:func:`make_loss` builds the :class:`jaxdiff.losses.TrainingLoss` of any parametrisation: the same draw /
evaluate split, reduction and auxiliary values for all of them. Shapes: images NHWC ``[B, H, W, C]``,
levels and coefficients ``[B]`` (broadcast over ``H, W, C`` here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxdiff.losses import TrainingLoss

__all__ = ["Parametrization", "Preconditioning", "denoise", "make_loss", "per_example"]

ApplyFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Preconditioning:
    """The coefficients of ``D(x, level) = c_skip x + c_out F(c_in x, c_noise)``.

    ``c_skip``, ``c_out``, ``c_in``: float32 ``[B]`` (or scalars); ``c_noise``: ``[B]``, the time input the
    network gets (an int32 timestep for DDPM, a float32 for EDM and flow matching).
    """

    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


class Parametrization(Protocol):
    """One way of training a denoiser (module docstring). ``level`` is ``[B]`` throughout."""

    def sample_levels(self, key: jax.Array, batch_size: int) -> jax.Array:
        """The training noise levels ``[B]``."""
        ...

    def draw_noise(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        """The corrupting noise of ``shape`` (standard normal for all but the course's objective)."""
        ...

    def add_noise(self, x0: jax.Array, noise: jax.Array, level: jax.Array) -> jax.Array:
        """``x_level`` from clean ``x0`` and ``noise`` (both ``[B, H, W, C]``)."""
        ...

    def preconditioning(self, level: jax.Array) -> Preconditioning: ...

    def network_input(self, x: jax.Array, level: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(c_in x, c_noise)``: what the network sees at ``x`` (``[B, H, W, C]``) and ``level``."""
        ...

    def training_target(self, x0: jax.Array, noise: jax.Array, level: jax.Array, x_t: jax.Array) -> jax.Array:
        """What the network learns to output at ``x_t``, ``x0``'s shape."""
        ...

    def loss_weight(self, level: jax.Array) -> jax.Array:
        """float32 ``[B]`` weights of the per-example squared error of the network's output."""
        ...


def per_example(c: jax.Array, ndim: int) -> jax.Array:
    """A ``[B]`` coefficient (or a scalar) shaped to broadcast over an ``ndim``-dimensional ``[B, ...]``."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (ndim - c.ndim)) if c.ndim == 1 else c


def denoise(
    parametrization: Parametrization,
    network: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    level: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(D(x, level), F)``: the denoised estimate of ``x0`` and the raw network output ``F``.

    ``network(x_in, t) -> F`` with ``x_in`` ``[B, H, W, C]`` and ``t`` ``[B]``; ``x`` float32
    ``[B, H, W, C]``.
    """
    c = parametrization.preconditioning(level)
    x_in, t = parametrization.network_input(x, level)
    out = network(x_in, t).astype(jnp.float32)
    return per_example(c.c_skip, x.ndim) * x + per_example(c.c_out, x.ndim) * out, out


def make_loss(parametrization: Parametrization) -> TrainingLoss:
    """The :class:`TrainingLoss` of a parametrisation.

    ``draw``: the key is split in three (levels ``[B]``, noise of ``x0``'s shape and dtype, dropout key).
    ``evaluate``: ``x_t = add_noise(x0, noise, level)``, ``F = apply_fn(params, c_in x_t, c_noise)``, and
    ``mean_b(w_b * mean((F - target)^2 over the non-batch axes of example b))`` in float32 with
    ``w = loss_weight(level)``. ``aux = {"mse": unweighted mean squared error, "per_example_mse": [B],
    "timesteps": the levels [B]}``.
    """
    p = parametrization

    def draw(key: jax.Array, x0: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        key_level, key_noise, key_dropout = jax.random.split(key, 3)
        level = p.sample_levels(key_level, x0.shape[0])
        return {"t": level, "noise": p.draw_noise(key_noise, x0.shape, x0.dtype)}, key_dropout

    def evaluate(
        apply_fn: ApplyFn,
        params: Any,
        x0: jax.Array,
        draws: dict[str, jax.Array],
        dropout_key: jax.Array,
        class_labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        level, noise = draws["t"], draws["noise"]
        x_t = p.add_noise(x0, noise, level)
        x_in, t_in = p.network_input(x_t, level)
        prediction = apply_fn(params, x_in, t_in, class_labels=class_labels, key=dropout_key)
        target = p.training_target(x0, noise, level, x_t)
        error = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
        per_example_mse = jnp.mean(error, axis=tuple(range(1, error.ndim)))
        loss = jnp.mean(per_example_mse * p.loss_weight(level))
        return loss, {
            "mse": jnp.mean(per_example_mse),
            "per_example_mse": per_example_mse,
            "timesteps": level,
        }

    return TrainingLoss(draw=draw, evaluate=evaluate)
