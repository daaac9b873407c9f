"""Samplers from diffusers scheduler configs (``scheduler_config.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import as_dict
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.catalog import BY_CLASS_NAME

SCHEDULER_CLASSES = tuple(BY_CLASS_NAME)


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
      num_inference_steps: number of sampling steps as diffusers counts them (``set_timesteps``'s
        argument). The sampler's ``num_steps`` (scan iterations = model evaluations) is the length of
        diffusers' ``timesteps``: the same, except for Heun (``2 n - 1``).
      **overrides: config keys to replace, and the pipeline-call options of the class (DDIM: ``eta``,
        ``use_clipped_model_output``).

    Every key of the diffusers class is accepted at its default value (tables in each sampler module);
    a non-default value of an option jaxdiff does not implement, an unknown key, or a bad value raises
    ``UserError`` naming it.
    """
    merged = {**as_dict(config, "scheduler config"), **overrides}
    class_name = merged.get("_class_name")
    if class_name not in BY_CLASS_NAME:
        raise UserError(f"scheduler _class_name={class_name!r} is not one of {', '.join(SCHEDULER_CLASSES)}")
    module = BY_CLASS_NAME[class_name]
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
