"""Samplers from diffusers scheduler configs (``scheduler_config.json``) and from short names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdiff.errors import UserError
from jaxdiff.samplers import ddim, ddpm, dpm_solver, euler
from jaxdiff.samplers.base import Sampler
from jaxdiff.schedules import SCHEDULE_KEYS

_MODULES = {m.CLASS_NAME: m for m in (ddpm, ddim, dpm_solver, euler)}
SCHEDULER_CLASSES = tuple(_MODULES)

# Short names accepted by ``scheduler_config_for`` (and the sample CLI).
SAMPLER_NAMES: dict[str, str] = {
    "ddpm": ddpm.CLASS_NAME,
    "ddim": ddim.CLASS_NAME,
    "dpm++": dpm_solver.CLASS_NAME,
    "dpmsolver++": dpm_solver.CLASS_NAME,
    "dpm-solver++": dpm_solver.CLASS_NAME,
    "euler": euler.CLASS_NAME,
}


def _as_dict(config: Any, what: str) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise UserError(f"{what} must be a mapping, got {type(config).__name__}")
    return dict(config)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def from_diffusers_config(config: Mapping[str, Any], num_inference_steps: int, **overrides: Any) -> Sampler:
    """A ``Sampler`` equivalent to diffusers' ``<_class_name>.from_config(config)`` after
    ``set_timesteps(num_inference_steps)``.

    Args:
      config: a diffusers scheduler config dict, as in ``scheduler_config.json``: ``_class_name`` one of
        ``SCHEDULER_CLASSES``; other keys starting with ``_`` (``_diffusers_version``, ...) are ignored.
      num_inference_steps: number of sampling steps.
      **overrides: config keys to replace, and the pipeline-call options of the class (DDIM: ``eta``,
        ``use_clipped_model_output``).

    Every key of the diffusers class is accepted at its default value (tables in each sampler module);
    a non-default value of an option jaxdiff does not implement, an unknown key, or a bad value raises
    ``UserError`` naming it.
    """
    merged = {**_as_dict(config, "scheduler config"), **overrides}
    class_name = merged.get("_class_name")
    if class_name not in _MODULES:
        raise UserError(f"scheduler _class_name={class_name!r} is not one of {', '.join(SCHEDULER_CLASSES)}")
    module = _MODULES[class_name]
    given = {key: value for key, value in merged.items() if not key.startswith("_")}
    defaults = {**module.DEFAULTS, **module.CALL_DEFAULTS}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(
            f"unknown {class_name} config key {unknown[0]!r}; allowed keys: {', '.join(sorted(defaults))}"
        )
    full = {**defaults, **given}
    for key in sorted(set(defaults) - module.IMPLEMENTED):
        if not _same(full[key], defaults[key]):
            raise UserError(
                f"{class_name} option {key}={full[key]!r} is not implemented in jaxdiff "
                f"(only the default {defaults[key]!r})"
            )
    return module.build(full, num_inference_steps)


def scheduler_config_for(name: str, train_config: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """A diffusers scheduler config dict for a short sampler name and a model's training diffusion config.

    Args:
      name: one of ``SAMPLER_NAMES`` ("ddpm", "ddim", "dpm++", "euler", ...) or a scheduler class name.
      train_config: the training diffusion config (a dict or ConfigDict); its noise-schedule keys
        (``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``,
        ``rescale_betas_zero_snr``) and ``prediction_type`` are copied, every other key is left out.
      **options: further scheduler config keys (e.g. ``timestep_spacing``, ``clip_sample``, ``eta``).

    Returns:
      A dict with ``_class_name`` that ``from_diffusers_config`` accepts (and diffusers' ``from_config``,
      except for jaxdiff-only call options such as ``eta``).
    """
    class_name = SAMPLER_NAMES.get(name, name if name in _MODULES else None)
    if class_name is None:
        allowed = ", ".join([*SAMPLER_NAMES, *SCHEDULER_CLASSES])
        raise UserError(f"sampler {name!r} is not one of {allowed}")
    config: dict[str, Any] = {"_class_name": class_name}
    if train_config is not None:
        train = _as_dict(train_config, "diffusion config")
        for key in (*SCHEDULE_KEYS, "prediction_type"):
            if key in train:
                config[key] = train[key]
    config.update(options)
    return config
