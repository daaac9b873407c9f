"""Training objectives: one registry entry each, read by training (the loss) and inference (the sampler).

An :class:`Objective` says everything that differs between ways of training a denoiser:

- ``parametrization(diffusion)``: the network as a denoiser (``jaxdiff.denoisers``): its noise levels,
  preconditioning, training target and weighting, for a ``diffusion`` config section (a mapping);
- ``make_loss(diffusion)``: the ``TrainingLoss`` (by default ``jaxdiff.denoisers.make_loss`` of it);
- ``validate(diffusion)``: the checks on the keys it reads, without building anything;
- ``accepts_sampler(entry)``: which registered samplers (``jaxdiff.samplers``) can sample its models;
- ``make_sampling(diffusion, sampler, num_steps, eta)``: a :class:`Sampling` procedure (its start noise
  and its loop) for a model trained so;
- ``uses_schedulers``: whether ``sample.sampler`` names a registered sampler or is ignored;
  ``export_scheduler(diffusion)`` / ``pipeline_class``: the diffusers scheduler config and pipeline class
  of an exported model (None: not exportable).

Adding an objective is one :func:`register_objective` call beside its own parametrisation module; the
run config, the train step, ``sample.py`` and the export ask the registry.

Registered here: ``"ddpm"`` (epsilon / sample / v targets on a discrete noise schedule, sampled by the
diffusers schedulers that read a beta schedule), ``"edm"`` (Karras et al. 2022's preconditioning, sampled
by EDM's own stochastic sampler and diffusers' EDM schedulers), ``"flow"`` (flow matching / rectified
flow, sampled by ``FlowMatchEulerDiscreteScheduler``) and ``"from_scratch"`` (the course's corruption
process and its iterative sampler).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import corruption, denoisers, losses, samplers, schedules
from jaxdiff.errors import UserError
from jaxdiff.guidance import LossGuidance
from jaxdiff.losses import TrainingLoss

__all__ = [
    "EDM_DEFAULTS",
    "EDM_SCHEDULER_CLASSES",
    "FLOW_DEFAULTS",
    "FLOW_SCHEDULER_CLASSES",
    "Objective",
    "Sampling",
    "get_objective",
    "objective_for_scheduler",
    "objective_names",
    "register_objective",
]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# The scheduler classes that sample EDM / flow-matching models (the EDM ones diffusers' and jaxdiff's).
EDM_SCHEDULER_CLASSES = frozenset(
    {"EDMStochasticSampler", "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
)
FLOW_SCHEDULER_CLASSES = frozenset({"FlowMatchEulerDiscreteScheduler"})


@dataclasses.dataclass(frozen=True)
class Sampling:
    """A sampling procedure for one model: how to draw ``x_T`` and how to denoise it.

    Attributes:
      num_steps: the loop's iterations (the length of recorded intermediates).
      initial_noise: ``(key, shape) -> x_T`` float32.
      run: ``(model_fn, x_T, key, intermediates_every, loss_guidance=None) -> x0`` or
        ``(x0, {"x_t", "pred_x0"})`` with ``model_fn(x, t) -> model output`` (``[B, H, W, C]``, ``t``
        ``[B]``), all inside one ``lax.scan``; ``loss_guidance`` (``jaxdiff.guidance.LossGuidance``) steers
        every model evaluation with a loss on the predicted ``x0`` (``samplers.sample``).
      scheduler: the scheduler config it follows, or None.
    """

    num_steps: int
    initial_noise: Callable[[jax.Array, tuple[int, ...]], jax.Array]
    run: Callable[..., Any]
    scheduler: dict[str, Any] | None = None


def _any_sampler(entry: samplers.SamplerEntry) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registry entry (see the module docstring)."""

    name: str
    description: str
    parametrization: Callable[[Mapping[str, Any]], denoisers.Parametrization]
    validate: Callable[[Mapping[str, Any]], None]
    make_sampling: Callable[[Mapping[str, Any], str, int, float], Sampling]
    accepts_sampler: Callable[[samplers.SamplerEntry], bool] = _any_sampler
    uses_schedulers: bool = True
    export_scheduler: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    pipeline_class: str | None = None
    loss: Callable[[Mapping[str, Any]], TrainingLoss] | None = None

    @property
    def exportable(self) -> bool:
        """Whether diffusers can sample it from an exported pipeline."""
        return self.export_scheduler is not None

    def make_loss(self, diffusion: Mapping[str, Any]) -> TrainingLoss:
        """The training loss for a ``diffusion`` section (a mapping)."""
        if self.loss is not None:
            return self.loss(diffusion)
        return denoisers.make_loss(self.parametrization(diffusion))

    def resolve_sampler(self, name: Any, key: str = "sampler") -> str:
        """The canonical name of a registered sampler that can sample this objective's models; a one-line
        ``UserError`` naming ``key`` otherwise. Names are not checked where no scheduler is used."""
        if not self.uses_schedulers:
            return name
        try:
            entry = samplers.resolve_sampler(name)
        except UserError:
            raise UserError(
                f"{key}={name!r} is not allowed; use one of {', '.join(self.sampler_names())} (or an alias)"
            ) from None
        if not self.accepts_sampler(entry):
            raise UserError(
                f"{key}={name!r} cannot sample a model trained with diffusion.objective={self.name!r}; "
                f"use one of {', '.join(self.sampler_names())}"
            )
        return entry.name

    def sampler_names(self) -> tuple[str, ...]:
        """The registered samplers' short names that accept this objective's models."""
        return tuple(n for n in samplers.sampler_names() if self.accepts_sampler(samplers.resolve_sampler(n)))


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


def objective_for_scheduler(class_name: Any) -> Objective:
    """The objective whose models a diffusers scheduler class samples (a pipeline folder's scheduler):
    ``edm`` / ``flow`` for theirs, ``ddpm`` for every other."""
    if class_name in EDM_SCHEDULER_CLASSES:
        return get_objective("edm")
    if class_name in FLOW_SCHEDULER_CLASSES:
        return get_objective("flow")
    return get_objective("ddpm")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed; {allowed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_positive(diffusion: Mapping[str, Any], key: str, default: float) -> None:
    value = diffusion.get(key, default)
    _check(_is_number(value) and value > 0, f"diffusion.{key}", value, "use a positive number")


def _standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32)


def _scheduler_sampling(config: dict[str, Any], num_steps: int, **overrides: Any) -> Sampling:
    """A registered sampler's scan (``samplers.sample``) for a scheduler config (and call options)."""
    smp = samplers.from_diffusers_config(config, int(num_steps), **overrides)

    def run(
        model_fn: ModelFn,
        x: jax.Array,
        key: jax.Array,
        intermediates_every: int | None,
        loss_guidance: LossGuidance | None = None,
    ) -> Any:
        out = samplers.sample(
            smp, model_fn, x, key, intermediates_every=intermediates_every, loss_guidance=loss_guidance
        )
        if intermediates_every is None:
            return out
        return out[0], {"x_t": out[1]["x_t"], "pred_x0": out[1]["pred_x0"]}

    return Sampling(num_steps=smp.num_steps, initial_noise=_standard_normal, run=run, scheduler=config)


# -- ddpm: a discrete noise schedule, epsilon / sample / v targets, the beta-schedule samplers ---------------


def _ddpm_parametrization(diffusion: Mapping[str, Any]) -> denoisers.DDPMParametrization:
    return denoisers.DDPMParametrization(
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
    _check(_is_number(gamma) and gamma > 0, "diffusion.snr_gamma", gamma, "use a positive number")
    schedules.schedule_from_config(diffusion)  # a bad beta schedule: UserError


def _ddpm_accepts(entry: samplers.SamplerEntry) -> bool:
    """The samplers of a discrete beta schedule (DDPM, DDIM, DPM-Solver, Euler, Heun, UniPC, ...)."""
    return entry.discrete_schedule and entry.class_name not in EDM_SCHEDULER_CLASSES | FLOW_SCHEDULER_CLASSES


def _ddpm_sampling(diffusion: Mapping[str, Any], sampler: str, num_steps: int, eta: float) -> Sampling:
    config = samplers.scheduler_config_for(sampler, diffusion)
    overrides = {"eta": float(eta)} if config["_class_name"] == "DDIMScheduler" else {}
    return _scheduler_sampling(config, num_steps, **overrides)


register_objective(
    Objective(
        name="ddpm",
        description="DDPM: epsilon / sample / v targets on a discrete noise schedule (diffusers' training)",
        parametrization=_ddpm_parametrization,
        validate=_ddpm_validate,
        make_sampling=_ddpm_sampling,
        accepts_sampler=_ddpm_accepts,
        export_scheduler=lambda diffusion: samplers.scheduler_config_for("ddpm", diffusion),
    )
)


# -- edm: Karras et al. 2022's preconditioning, log-normal noise levels, EDM's and diffusers' samplers -------

# The diffusion keys of an EDM model and their defaults (the paper's CIFAR-10 values; S_churn = 0 samples
# deterministically). The sigma range, rho and sigma_data are shared by training (the preconditioning)
# and the samplers; P_mean / P_std are training's, the S_* the stochastic sampler's.
EDM_DEFAULTS: dict[str, Any] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "rho": 7.0,
    "p_mean": -1.2,
    "p_std": 1.2,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": math.inf,
    "s_noise": 1.0,
}
EDM_PREDICTION_TYPES = denoisers.edm.PREDICTION_TYPES


def _edm(diffusion: Mapping[str, Any], key: str) -> Any:
    value = diffusion.get(key)
    return EDM_DEFAULTS[key] if value is None else value


def _edm_parametrization(diffusion: Mapping[str, Any]) -> denoisers.EDMParametrization:
    return denoisers.EDMParametrization(
        sigma_data=float(_edm(diffusion, "sigma_data")),
        p_mean=float(_edm(diffusion, "p_mean")),
        p_std=float(_edm(diffusion, "p_std")),
        prediction_type=diffusion.get("prediction_type", "epsilon"),
    )


def _edm_validate(diffusion: Mapping[str, Any]) -> None:
    pt = diffusion.get("prediction_type", "epsilon")
    _check(
        pt in EDM_PREDICTION_TYPES,
        "diffusion.prediction_type",
        pt,
        f"use one of {', '.join(EDM_PREDICTION_TYPES)} (diffusers' EDM schedulers' readings)",
    )
    for key in ("sigma_min", "sigma_max", "sigma_data", "rho", "p_std", "s_noise"):
        _check_positive(diffusion, key, EDM_DEFAULTS[key])
    sigma_min, sigma_max = _edm(diffusion, "sigma_min"), _edm(diffusion, "sigma_max")
    _check(sigma_max > sigma_min, "diffusion.sigma_max", sigma_max, f"it must exceed sigma_min={sigma_min}")
    p_mean = _edm(diffusion, "p_mean")
    _check(_is_number(p_mean), "diffusion.p_mean", p_mean, "use a number")
    for key in ("s_churn", "s_tmin"):
        value = _edm(diffusion, key)
        _check(_is_number(value) and value >= 0, f"diffusion.{key}", value, "use a number >= 0")
    s_tmin, s_tmax = _edm(diffusion, "s_tmin"), _edm(diffusion, "s_tmax")
    _check(
        _is_number(s_tmax) and s_tmax >= s_tmin,
        "diffusion.s_tmax",
        s_tmax,
        f"use a number >= s_tmin={s_tmin}",
    )


def _edm_sampling(diffusion: Mapping[str, Any], sampler: str, num_steps: int, eta: float) -> Sampling:
    del eta  # the S_* keys say how stochastic EDM's sampler is
    entry = samplers.resolve_sampler(sampler)
    # Every EDM key the scheduler class has, whatever its registry entry copies.
    options = {key: _edm(diffusion, key) for key in EDM_DEFAULTS if key in entry.config_keys}
    return _scheduler_sampling(samplers.scheduler_config_for(sampler, diffusion, **options), num_steps)


def _edm_export_scheduler(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers' ``EDMEulerScheduler`` with the model's preconditioning and sigma range."""
    return {
        "_class_name": "EDMEulerScheduler",
        "sigma_min": float(_edm(diffusion, "sigma_min")),
        "sigma_max": float(_edm(diffusion, "sigma_max")),
        "sigma_data": float(_edm(diffusion, "sigma_data")),
        "sigma_schedule": "karras",
        "num_train_timesteps": int(diffusion.get("num_train_timesteps", 1000)),
        "prediction_type": diffusion.get("prediction_type", "epsilon"),
        "rho": float(_edm(diffusion, "rho")),
        "final_sigmas_type": "zero",
    }


register_objective(
    Objective(
        name="edm",
        description="EDM (Karras et al. 2022): preconditioned denoiser, log-normal noise levels",
        parametrization=_edm_parametrization,
        validate=_edm_validate,
        make_sampling=_edm_sampling,
        accepts_sampler=lambda entry: entry.class_name in EDM_SCHEDULER_CLASSES,
        export_scheduler=_edm_export_scheduler,
        # DDPMPipeline neither scales the model input nor the start noise; this pipeline runs diffusers'
        # usual loop (init_noise_sigma, scale_model_input, step) with any scheduler.
        pipeline_class="ConsistencyModelPipeline",
    )
)


# -- flow: flow matching / rectified flow, velocity target, FlowMatchEulerDiscreteScheduler ------------------

FLOW_DEFAULTS: dict[str, Any] = {
    "time_sampling": "logit_normal",
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "shift": 1.0,
}


def _flow(diffusion: Mapping[str, Any], key: str) -> Any:
    value = diffusion.get(key)
    return FLOW_DEFAULTS[key] if value is None else value


def _flow_parametrization(diffusion: Mapping[str, Any]) -> denoisers.FlowParametrization:
    return denoisers.FlowParametrization(
        num_train_timesteps=int(diffusion.get("num_train_timesteps", 1000)),
        time_sampling=_flow(diffusion, "time_sampling"),
        logit_mean=float(_flow(diffusion, "logit_mean")),
        logit_std=float(_flow(diffusion, "logit_std")),
        shift=float(_flow(diffusion, "shift")),
    )


def _flow_validate(diffusion: Mapping[str, Any]) -> None:
    pt = diffusion.get("prediction_type", "epsilon")
    _check(
        pt == "epsilon",
        "diffusion.prediction_type",
        pt,
        "flow matching's network predicts the velocity noise - x0; leave it at its default 'epsilon'",
    )
    sampling = _flow(diffusion, "time_sampling")
    allowed = denoisers.flow.TIME_SAMPLINGS
    _check(sampling in allowed, "diffusion.time_sampling", sampling, f"use one of {', '.join(allowed)}")
    _check_positive(diffusion, "logit_std", FLOW_DEFAULTS["logit_std"])
    _check_positive(diffusion, "shift", FLOW_DEFAULTS["shift"])
    mean = _flow(diffusion, "logit_mean")
    _check(_is_number(mean), "diffusion.logit_mean", mean, "use a number")


def _flow_scheduler(diffusion: Mapping[str, Any], sampler: str) -> dict[str, Any]:
    return samplers.scheduler_config_for(sampler, diffusion, shift=float(_flow(diffusion, "shift")))


register_objective(
    Objective(
        name="flow",
        description="flow matching / rectified flow: x_s = (1 - s) x0 + s noise, velocity target",
        parametrization=_flow_parametrization,
        validate=_flow_validate,
        make_sampling=lambda diffusion, sampler, num_steps, eta: _scheduler_sampling(
            _flow_scheduler(diffusion, sampler), num_steps
        ),
        accepts_sampler=lambda entry: entry.class_name in FLOW_SCHEDULER_CLASSES,
        export_scheduler=lambda diffusion: _flow_scheduler(diffusion, "flow_euler"),
    )
)


# -- from_scratch: the course's corruption process and its iterative sampler ---------------------------------


def _from_scratch_sampling(
    diffusion: Mapping[str, Any], sampler: str, num_steps: int, eta: float
) -> Sampling:
    del diffusion, sampler, eta  # one sampler, no schedule
    steps = int(num_steps)

    def run(
        model_fn: ModelFn,
        x: jax.Array,
        key: jax.Array,
        intermediates_every: int | None,
        loss_guidance: LossGuidance | None = None,
    ) -> Any:
        del key  # deterministic
        apply_fn = lambda params, x_t, t: model_fn(x_t, t)  # noqa: E731
        out = corruption.from_scratch_sample(
            apply_fn,
            None,
            x,
            steps,
            return_intermediates=intermediates_every is not None,
            loss_guidance=loss_guidance,
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
        parametrization=lambda diffusion: denoisers.FromScratchParametrization(),
        validate=lambda diffusion: None,
        make_sampling=_from_scratch_sampling,
        uses_schedulers=False,
        loss=lambda diffusion: denoisers.FromScratchParametrization().make_loss(),
    )
)
