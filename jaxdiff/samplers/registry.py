"""The one registry of sampler names: short name, aliases, diffusers class, what a training config implies.

Each sampler module registers its own ``SamplerEntry`` when imported; the library, the configs and the
CLIs resolve names here (``resolve_sampler``) and build scheduler configs here
(``scheduler_config_for``). Adding a sampler is one module with one ``register_sampler`` call.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import as_dict
from jaxdiff.schedules import SCHEDULE_KEYS

# Training-config keys every sampler's scheduler config copies (when the class has them): the noise
# schedule the model was trained with and what its output means.
BASE_TRAIN_KEYS: tuple[str, ...] = (*SCHEDULE_KEYS, "prediction_type")


@dataclasses.dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler.

    Attributes:
      name: canonical short name ("ddim", "dpm++", "euler_a", ...).
      class_name: the diffusers scheduler class ("DDIMScheduler", ...); also accepted as a name.
      aliases: other accepted names.
      train_keys: training-config ``diffusion`` keys copied into the scheduler config beyond
        ``BASE_TRAIN_KEYS`` (e.g. DDIM's ``clip_sample``, ``timestep_spacing``).
      options: fixed scheduler config options the name implies (e.g. dpm++sde's ``algorithm_type``).
      stochastic: whether the sampler draws fresh noise at each step (informational).
      config_keys: the scheduler class's config keys (and call options); training keys outside it are
        not copied (an EDM scheduler has no ``beta_schedule``). Empty: no restriction.
      discrete_schedule: whether it samples a model trained on the DDPM discrete beta schedule (False for
        the flow-matching and EDM samplers, whose models are trained on other noise paths).
    """

    name: str
    class_name: str
    aliases: tuple[str, ...] = ()
    train_keys: tuple[str, ...] = ()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stochastic: bool = False
    config_keys: frozenset[str] = frozenset()
    discrete_schedule: bool = True

    def __post_init__(self) -> None:
        # Read-only, so that a resolved entry cannot be changed by its user.
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))


_ENTRIES: dict[str, SamplerEntry] = {}  # canonical name -> entry, in registration order
_LOOKUP: dict[str, SamplerEntry] = {}  # every accepted name (canonical, alias, class name) -> entry


def register_sampler(entry: SamplerEntry) -> SamplerEntry:
    """Add ``entry``; ValueError if its name or an alias is already taken. Returns ``entry``.

    Its class name is accepted too, by the first entry registered for that class (several entries may
    share a class, e.g. "dpm++" and "dpm++sde").
    """
    names = (entry.name, *entry.aliases)
    taken = [name for name in names if name in _LOOKUP or names.count(name) > 1]
    if taken:
        raise ValueError(f"sampler name {taken[0]!r} is already registered")
    _ENTRIES[entry.name] = entry
    for name in names:
        _LOOKUP[name] = entry
    _LOOKUP.setdefault(entry.class_name, entry)
    return entry


def sampler_names() -> tuple[str, ...]:
    """The canonical short names, in registration order."""
    return tuple(_ENTRIES)


def resolve_sampler(name: str) -> SamplerEntry:
    """The entry of a canonical short name, an alias or a diffusers class name; else UserError."""
    if isinstance(name, str) and name in _LOOKUP:
        return _LOOKUP[name]
    raise UserError(
        f"sampler {name!r} is not one of {', '.join(_ENTRIES)} "
        "(their aliases and diffusers class names are accepted too)"
    )


def scheduler_config_for(name: str, train_config: Mapping[str, Any] | None = None, **options: Any) -> dict:
    """A diffusers scheduler config dict for a sampler name and a model's training diffusion config.

    Args:
      name: a canonical name (``sampler_names()``), an alias or a scheduler class name.
      train_config: the training ``diffusion`` config (a dict or ConfigDict); its noise-schedule keys
        (``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``,
        ``rescale_betas_zero_snr``), ``prediction_type`` and the entry's ``train_keys`` are copied where
        present, not None, and keys of the scheduler class; every other key is left out.
      **options: further scheduler config keys (e.g. ``timestep_spacing``, ``clip_sample``, ``eta``).

    Returns:
      ``{"_class_name": ..., <copied keys>, **entry.options, **options}``, which ``from_diffusers_config``
      accepts (and diffusers' ``from_config``, except for jaxdiff-only call options such as ``eta``).
    """
    entry = resolve_sampler(name)
    config: dict[str, Any] = {"_class_name": entry.class_name}
    if train_config is not None:
        train = as_dict(train_config, "diffusion config")
        for key in (*BASE_TRAIN_KEYS, *entry.train_keys):
            if train.get(key) is not None and (not entry.config_keys or key in entry.config_keys):
                config[key] = train[key]
    config.update(entry.options)
    config.update(options)
    return config
