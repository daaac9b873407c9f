"""Samplers (diffusers schedulers) as pure JAX: build a ``Sampler`` from a scheduler config, then ``sample``.

>>> sampler = from_diffusers_config({"_class_name": "DDIMScheduler"}, num_inference_steps=50)
>>> x0 = sample(sampler, model_fn, jax.random.normal(key, (8, 32, 32, 3)), key)
"""

from jaxdiff.samplers.base import Sampler, step_noise
from jaxdiff.samplers.config import (
    SAMPLER_NAMES,
    SCHEDULER_CLASSES,
    from_diffusers_config,
    scheduler_config_for,
)
from jaxdiff.samplers.loop import recorded_steps, sample

__all__ = [
    "SAMPLER_NAMES",
    "SCHEDULER_CLASSES",
    "Sampler",
    "from_diffusers_config",
    "recorded_steps",
    "sample",
    "scheduler_config_for",
    "step_noise",
]
