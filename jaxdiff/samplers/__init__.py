"""Samplers (diffusers schedulers) as pure JAX: build a ``Sampler`` from a scheduler config, then ``sample``.

>>> sampler = from_diffusers_config({"_class_name": "DDIMScheduler"}, num_inference_steps=50)
>>> x0 = sample(sampler, model_fn, jax.random.normal(key, (8, 32, 32, 3)), key)

Short names ("ddim", "dpm++", ...) live in one registry (``samplers/registry.py``):
``scheduler_config_for("ddim", train_diffusion_config)`` gives the scheduler config of a name.
"""

from jaxdiff.samplers.base import Sampler, step_noise
from jaxdiff.samplers.config import SCHEDULER_CLASSES, from_diffusers_config
from jaxdiff.samplers.registry import (
    SamplerEntry,
    register_sampler,
    resolve_sampler,
    sampler_names,
    scheduler_config_for,
)
from jaxdiff.samplers.scan import recorded_steps, sample

__all__ = [
    "SCHEDULER_CLASSES",
    "Sampler",
    "SamplerEntry",
    "from_diffusers_config",
    "recorded_steps",
    "register_sampler",
    "resolve_sampler",
    "sample",
    "sampler_names",
    "scheduler_config_for",
    "step_noise",
]
