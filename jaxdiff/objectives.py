"""Training objectives: one registry entry each, read by training (the loss) and inference (the sampler).

An :class:`Objective` says everything that differs between ways of training a denoiser:

- ``make_loss(diffusion)``: the ``TrainingLoss`` for a ``diffusion`` config section (a mapping);
- ``validate(diffusion)``: the checks on the keys it reads, without building anything;
- ``make_sampling(diffusion, sampler, num_steps, eta)``: a :class:`Sampling` procedure (its start noise
  and its loop) for a model trained so;
- ``uses_schedulers``: whether ``sample.sampler`` names a diffusers scheduler (``jaxdiff.samplers``'s
  registry) or is ignored; ``exportable``: whether diffusers can sample it from an exported pipeline.

Adding an objective is one :func:`register_objective` call beside its own loss and sampler modules; the
run config, the train step, ``sample.py`` and the export ask the registry.

Registered here: ``"ddpm"`` (``jaxdiff.losses``: epsilon / sample / v targets on a discrete noise
schedule, sampled by any diffusers scheduler) and ``"from_scratch"`` (``jaxdiff.corruption``: the course's
corruption process and its iterative sampler).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import corruption, losses, samplers, schedules
from jaxdiff.errors import UserError

__all__ = [
    "Objective",
    "Sampling",
    "get_objective",
    "objective_names",
    "register_objective",
]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """A sampling procedure for one model: how to draw ``x_T`` and how to denoise it.

    Attributes:
      num_steps: the loop's iterations (the length of recorded intermediates).
      initial_noise: ``(key, shape) -> x_T`` float32.
      run: ``(model_fn, x_T, key, intermediates_every) -> x0`` or ``(x0, {"x_t", "pred_x0"})`` with
        ``model_fn(x, t) -> model output`` (``[B, H, W, C]``, ``t`` ``[B]``), all inside one ``lax.scan``.
      scheduler: the diffusers scheduler config it follows, or None.
    """

    num_steps: int
    initial_noise: Callable[[jax.Array, tuple[int, ...]], jax.Array]
    run: Callable[..., Any]
    scheduler: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registry entry (see the module docstring)."""

    name: str
    description: str
    make_loss: Callable[[Mapping[str, Any]], losses.TrainingLoss]
    validate: Callable[[Mapping[str, Any]], None]
    make_sampling: Callable[[Mapping[str, Any], str, int, float], Sampling]
    uses_schedulers: bool = True
    exportable: bool = True


_OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to the registry (its name must be new)."""
    if objective.name in _OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is registered already")
    _OBJECTIVES[objective.name] = objective
    return objective


def objective_names() -> tuple[str, ...]:
    return tuple(_OBJECTIVES)


def get_objective(name: Any) -> Objective:
    """The registered objective ``name``; ``UserError`` naming ``diffusion.objective`` otherwise."""
    if name not in _OBJECTIVES:
        raise UserError(
            f"diffusion.objective={name!r} is not allowed; use one of {', '.join(objective_names())}"
        )
    return _OBJECTIVES[name]


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed; {allowed}")


# -- ddpm: a discrete noise schedule, epsilon / sample / v targets, any diffusers scheduler ------------------


def _ddpm_loss(diffusion: Mapping[str, Any]) -> losses.TrainingLoss:
    return losses.make_diffusion_loss(
        schedules.schedule_from_config(diffusion),
        prediction_type=diffusion.get("prediction_type", "epsilon"),
        loss_weighting=diffusion.get("loss_weighting", "none"),
        snr_gamma=float(diffusion.get("snr_gamma", 5.0)),
    )


def _ddpm_validate(diffusion: Mapping[str, Any]) -> None:
    pt = diffusion.get("prediction_type", "epsilon")
    _check(
        pt in losses.PREDICTION_TYPES,
        "diffusion.prediction_type",
        pt,
        f"use one of {', '.join(losses.PREDICTION_TYPES)}",
    )
    weighting = diffusion.get("loss_weighting", "none")
    _check(
        weighting in losses.LOSS_WEIGHTINGS,
        "diffusion.loss_weighting",
        weighting,
        f"use one of {', '.join(losses.LOSS_WEIGHTINGS)}",
    )
    gamma = diffusion.get("snr_gamma", 5.0)
    _check(
        isinstance(gamma, int | float) and not isinstance(gamma, bool) and gamma > 0,
        "diffusion.snr_gamma",
        gamma,
        "use a positive number",
    )
    schedules.schedule_from_config(diffusion)  # a bad beta schedule: UserError


def _ddpm_sampling(diffusion: Mapping[str, Any], sampler: str, num_steps: int, eta: float) -> Sampling:
    config = samplers.scheduler_config_for(sampler, diffusion)
    overrides = {"eta": float(eta)} if config["_class_name"] == "DDIMScheduler" else {}
    smp = samplers.from_diffusers_config(config, int(num_steps), **overrides)

    def initial_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jax.random.normal(key, shape, jnp.float32)

    def run(model_fn: ModelFn, x: jax.Array, key: jax.Array, intermediates_every: int | None) -> Any:
        out = samplers.sample(smp, model_fn, x, key, intermediates_every=intermediates_every)
        if intermediates_every is None:
            return out
        return out[0], {"x_t": out[1]["x_t"], "pred_x0": out[1]["pred_x0"]}

    return Sampling(num_steps=smp.num_steps, initial_noise=initial_noise, run=run, scheduler=config)


register_objective(
    Objective(
        name="ddpm",
        description="DDPM: epsilon / sample / v targets on a discrete noise schedule (diffusers' training)",
        make_loss=_ddpm_loss,
        validate=_ddpm_validate,
        make_sampling=_ddpm_sampling,
    )
)


# -- from_scratch: the course's corruption process and its iterative sampler ---------------------------------


def _from_scratch_sampling(
    diffusion: Mapping[str, Any], sampler: str, num_steps: int, eta: float
) -> Sampling:
    del diffusion, sampler, eta  # one sampler, no schedule
    steps = int(num_steps)

    def run(model_fn: ModelFn, x: jax.Array, key: jax.Array, intermediates_every: int | None) -> Any:
        del key  # deterministic
        apply_fn = lambda params, x_t, t: model_fn(x_t, t)  # noqa: E731
        out = corruption.from_scratch_sample(
            apply_fn, None, x, steps, return_intermediates=intermediates_every is not None
        )
        if intermediates_every is None:
            return out
        x0, hist = out
        keep = np.unique(np.append(np.arange(0, steps, intermediates_every), steps - 1))
        return x0, {"x_t": hist["x"][keep], "pred_x0": hist["pred"][keep]}

    return Sampling(num_steps=steps, initial_noise=corruption.from_scratch_noise, run=run)


register_objective(
    Objective(
        name="from_scratch",
        description="the course's corruption objective: predict the clean image from a noise mix",
        make_loss=lambda diffusion: corruption.make_from_scratch_loss(),
        validate=lambda diffusion: None,
        make_sampling=_from_scratch_sampling,
        uses_schedulers=False,
        exportable=False,
    )
)
