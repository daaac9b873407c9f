"""Inference: load a trained model (a workdir or a diffusers folder), build a sampler, draw images, export.

Depends on models, samplers, objectives, checkpointing and interop, never on ``jaxdiff.training``.

>>> model = load_workdir("workdirs/digits")                 # EMA weights of the newest checkpoint
>>> fn = model.sample_fn(sampler="ddim", num_inference_steps=50, batch_size=64)
>>> images = generate(fn, model.params, seed=0, num_samples=64)   # float32 [64, 16, 16, 1]
"""

from jaxdiff.inference.export import export_diffusers, export_scheduler_config
from jaxdiff.inference.generate import SampleFn, generate, make_sample_fn, sample_fn_for_run
from jaxdiff.inference.loading import LoadedModel, checkpoint_dir, load_pretrained, load_workdir

__all__ = [
    "LoadedModel",
    "SampleFn",
    "checkpoint_dir",
    "export_diffusers",
    "export_scheduler_config",
    "generate",
    "load_pretrained",
    "load_workdir",
    "make_sample_fn",
    "sample_fn_for_run",
]
