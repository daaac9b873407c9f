"""The denoising training objective (Ho et al. 2020) with diffusers' targets and min-SNR-gamma weighting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.schedules import NoiseSchedule, add_noise, get_velocity, snr

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
LOSS_WEIGHTINGS = ("none", "min_snr")

ApplyFn = Callable[..., jax.Array]
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class TrainingLoss:
    """A training loss split at its randomness, so that a train step can draw it for the whole batch and
    evaluate the loss on slices of the batch (microbatches) with the same numbers.

    ``loss(apply_fn, params, x0, key, class_labels=None) -> (loss, aux)`` is
    ``evaluate(apply_fn, params, x0, *draw(key, x0), class_labels)``.

    Attributes:
      draw: ``(key, x0 [B, H, W, C]) -> (draws, dropout_key)``: ``draws`` a dict of per-example arrays
        (leading dimension ``B``), ``dropout_key`` the key given to the model.
      evaluate: ``(apply_fn, params, x0, draws, dropout_key, class_labels) -> (loss, aux)``, the loss a
        mean over the examples (so the mean of equal microbatches' losses is the batch's loss).
    """

    draw: Callable[[jax.Array, jax.Array], tuple[dict[str, jax.Array], jax.Array]]
    evaluate: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

    def __call__(
        self,
        apply_fn: ApplyFn,
        params: Any,
        x0: jax.Array,
        key: jax.Array,
        class_labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        draws, dropout_key = self.draw(key, x0)
        return self.evaluate(apply_fn, params, x0, draws, dropout_key, class_labels)


def _check(prediction_type: str, loss_weighting: str = "none") -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"prediction_type={prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise UserError(f"loss_weighting={loss_weighting!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")


def training_target(
    schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array, prediction_type: str
) -> jax.Array:
    """What the model learns to predict from ``x_t = add_noise(schedule, x0, noise, t)``.

    "epsilon": ``noise``; "sample": ``x0``; "v_prediction": ``get_velocity(schedule, x0, noise, t)``.
    ``x0``, ``noise``: ``[B, ...]``; ``t``: int ``[B]``. Returns ``x0``'s shape.
    """
    _check(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return get_velocity(schedule, x0, noise, t)


def loss_weights(
    schedule: NoiseSchedule,
    t: jax.Array,
    prediction_type: str = "epsilon",
    loss_weighting: str = "none",
    snr_gamma: float = 5.0,
) -> jax.Array:
    """Per-example weights float32 ``[B]`` of the squared error at timesteps ``t [B]``.

    "none": ones. "min_snr": Min-SNR-gamma (Hang et al. 2023), ``min(SNR_t, gamma)`` as a weight on the
    x0-space error, expressed for the predicted quantity as diffusers' training examples do:
    ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v_prediction and
    ``min(SNR, gamma)`` for sample. (For epsilon it is computed as ``min(1, gamma / SNR)``, the same
    number, which stays finite at zero terminal SNR.)
    """
    _check(prediction_type, loss_weighting)
    if loss_weighting == "none":
        return jnp.ones(jnp.shape(t), jnp.float32)
    snr_t = snr(schedule, t)
    if prediction_type == "epsilon":
        return jnp.minimum(1.0, snr_gamma / snr_t)
    clipped = jnp.minimum(snr_t, snr_gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr_t + 1)
    return clipped


def diffusion_loss(
    schedule: NoiseSchedule,
    apply_fn: ApplyFn,
    params: Any,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    dropout_key: jax.Array | None = None,
    class_labels: jax.Array | None = None,
    *,
    prediction_type: str = "epsilon",
    loss_weighting: str = "none",
    snr_gamma: float = 5.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted denoising loss for given timesteps and noise (``make_diffusion_loss`` draws them).

    ``mean_b(w_b * mean((apply_fn(params, x_t, t) - target)^2 over the non-batch axes of example b))``,
    diffusers' ``F.mse_loss`` in float32, with ``w`` from ``loss_weights`` (all ones for "none").

    Args:
      x0: clean data ``[B, H, W, C]``; t: int ``[B]``; noise: ``x0``'s shape, standard normal.
      dropout_key: passed to ``apply_fn(..., key=dropout_key)``; None for a deterministic model.

    Returns:
      ``(loss, aux)``: float32 scalar loss and ``aux = {"mse": unweighted mean squared error (scalar),
      "per_example_mse": [B], "timesteps": [B]}``.
    """
    x_t = add_noise(schedule, x0, noise, t)
    prediction = apply_fn(params, x_t, t, class_labels=class_labels, key=dropout_key)
    target = training_target(schedule, x0, noise, t, prediction_type)
    error = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    per_example = jnp.mean(error, axis=tuple(range(1, error.ndim)))
    weights = loss_weights(schedule, t, prediction_type, loss_weighting, snr_gamma)
    loss = jnp.mean(per_example * weights)
    return loss, {"mse": jnp.mean(per_example), "per_example_mse": per_example, "timesteps": t}


def make_diffusion_loss(
    schedule: NoiseSchedule,
    prediction_type: str = "epsilon",
    loss_weighting: str = "none",
    snr_gamma: float = 5.0,
) -> TrainingLoss:
    """``loss_fn(apply_fn, params, x0, key, class_labels=None) -> (loss, aux)`` for DDPM-style training.

    ``key`` is split into three: ``t ~ U{0, ..., T-1}`` per example, standard normal noise of ``x0``'s
    shape and dtype, and the dropout key given to ``apply_fn``. See ``diffusion_loss`` for the rest. The
    result is a :class:`TrainingLoss` (its ``draw`` returns ``{"t": [B], "noise": x0's shape}``).
    """
    _check(prediction_type, loss_weighting)
    num_train_timesteps = schedule.num_train_timesteps

    def draw(key: jax.Array, x0: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        key_t, key_noise, key_dropout = jax.random.split(key, 3)
        t = jax.random.randint(key_t, x0.shape[:1], 0, num_train_timesteps)
        noise = jax.random.normal(key_noise, x0.shape, x0.dtype)
        return {"t": t, "noise": noise}, key_dropout

    def evaluate(
        apply_fn: ApplyFn,
        params: Any,
        x0: jax.Array,
        draws: dict[str, jax.Array],
        dropout_key: jax.Array,
        class_labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        return diffusion_loss(
            schedule,
            apply_fn,
            params,
            x0,
            draws["t"],
            draws["noise"],
            dropout_key,
            class_labels,
            prediction_type=prediction_type,
            loss_weighting=loss_weighting,
            snr_gamma=snr_gamma,
        )

    return TrainingLoss(draw=draw, evaluate=evaluate)
