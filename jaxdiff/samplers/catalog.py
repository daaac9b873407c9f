"""Every sampler module, by diffusers class name and by ``Sampler.kind``; registers their short names.

A sampler module provides ``CLASS_NAME``, ``KIND``, ``ENTRIES`` (its ``SamplerEntry`` short names),
``DEFAULTS`` / ``CALL_DEFAULTS`` / ``IMPLEMENTED`` (its diffusers config keys and call options, and
those it implements beyond their defaults), ``build(cfg, num_inference_steps) -> Sampler``, and the step
functions ``init_state``, ``scale_model_input`` and ``update`` that ``samplers/scan.py`` runs in its
``lax.scan`` (optionally ``first_stage(sampler, i) -> bool``: a multi-stage sampler's iterations that loss
guidance moves; all when absent). Adding a sampler: write its module and add it to ``MODULES``.
"""

from __future__ import annotations

import dataclasses
import types

from jaxdiff.samplers import (
    ddim,
    ddpm,
    dpm_solver,
    edm_dpm_solver,
    edm_euler,
    edm_stochastic,
    euler,
    euler_ancestral,
    flow_match,
    heun,
    unipc,
)
from jaxdiff.samplers.registry import register_sampler

# In the order their names are listed (sampler_names()).
MODULES: tuple[types.ModuleType, ...] = (
    ddpm,
    ddim,
    dpm_solver,
    euler,
    heun,
    euler_ancestral,
    unipc,
    flow_match,
    edm_euler,
    edm_dpm_solver,
    edm_stochastic,
)
BY_CLASS_NAME: dict[str, types.ModuleType] = {module.CLASS_NAME: module for module in MODULES}
BY_KIND: dict[str, types.ModuleType] = {module.KIND: module for module in MODULES}

for _module in MODULES:
    for _entry in _module.ENTRIES:
        _keys = frozenset(_module.DEFAULTS) | frozenset(_module.CALL_DEFAULTS)
        register_sampler(dataclasses.replace(_entry, config_keys=_keys))
