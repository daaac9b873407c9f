"""Exported EDM and flow-matching models sample identically in diffusers.

A tiny ``UNet2DModel`` (perturbed weights) is exported with ``jaxdiff.inference.export_diffusers``; the
folder loads with ``DiffusionPipeline.from_pretrained``, and diffusers' usual loop (``init_noise_sigma``,
``scale_model_input``, ``step``) with its scheduler and the same start noise gives jaxdiff's samples.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from flax import nnx

from jaxdiff import models, objectives
from jaxdiff.inference import export_diffusers, load_pretrained
from jaxdiff.samplers.catalog import BY_CLASS_NAME
from tests.conftest import assert_close

TINY = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)


def _perturbed_model():
    config = models.normalize_config(TINY)
    apply_fn, params = models.functional(models.create_model(config, rngs=nnx.Rngs(0)))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(1)
    params = jax.tree.unflatten(
        treedef, [x + jnp.asarray(0.05 * rng.randn(*x.shape), x.dtype) for x in leaves]
    )
    return config, apply_fn, params


def _diffusers_loop(pipe, noise_nhwc, num_steps):
    """diffusers' denoising loop (the one ConsistencyModelPipeline and the conditional pipelines run; the
    flow-matching scheduler has no input scaling and starts from unit noise, as SD3's pipeline uses it)."""
    scheduler, unet = pipe.scheduler, pipe.unet
    scheduler.set_timesteps(num_steps)
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    sample = torch.from_numpy(np.array(noise_nhwc)).permute(0, 3, 1, 2)
    sample = sample * getattr(scheduler, "init_noise_sigma", 1.0)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scale(sample, t), t).sample
            sample = scheduler.step(out, t, sample).prev_sample
    return sample.permute(0, 2, 3, 1).numpy()


def _export_and_compare(tmp_path, diffusion, sampler, num_steps, scheduler_class, pipeline_class):
    config, apply_fn, params = _perturbed_model()
    directory = export_diffusers(config, diffusion, params, tmp_path / "pipe")
    with open(tmp_path / "pipe" / "scheduler" / "scheduler_config.json") as f:
        saved = json.load(f)
    assert saved["_class_name"] == scheduler_class
    pipe = DiffusionPipeline.from_pretrained(directory)
    assert type(pipe).__name__ == pipeline_class and type(pipe.scheduler).__name__ == scheduler_class

    sampling = objectives.get_objective(diffusion["objective"]).make_sampling(
        diffusion, sampler, num_steps, 0.0
    )
    noise = sampling.initial_noise(jax.random.PRNGKey(0), (3, 8, 8, 1))
    ours = sampling.run(lambda x, t: apply_fn(params, x, t), noise, jax.random.PRNGKey(1), None)
    theirs = _diffusers_loop(pipe, noise, num_steps)
    assert_close(ours, theirs, 2e-4)
    return saved, directory


def test_flow_exports_flow_match_euler_and_diffusers_samples_it_identically(tmp_path):
    diffusion = {"objective": "flow", "num_train_timesteps": 1000, "shift": 3.0, "time_sampling": "uniform"}
    saved, directory = _export_and_compare(
        tmp_path, diffusion, "flow_euler", 6, "FlowMatchEulerDiscreteScheduler", "DDPMPipeline"
    )
    assert saved["shift"] == 3.0 and saved["num_train_timesteps"] == 1000
    # Loaded back, the pipeline is a flow model again.
    model = load_pretrained(directory)
    assert model.objective.name == "flow" and model.default_sampler == "flow_euler"


def test_edm_exports_edm_euler_with_its_preconditioning(tmp_path):
    diffusion = {
        "objective": "edm",
        "sigma_min": 0.005,
        "sigma_max": 40.0,
        "sigma_data": 0.6,
        "rho": 6.0,
        "prediction_type": "epsilon",
    }
    config, _, params = _perturbed_model()
    directory = export_diffusers(config, diffusion, params, tmp_path / "pipe")
    pipe = DiffusionPipeline.from_pretrained(directory)
    assert type(pipe).__name__ == "ConsistencyModelPipeline"
    sched = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "EDMEulerScheduler"
    assert (sched.sigma_min, sched.sigma_max, sched.sigma_data, sched.rho) == (0.005, 40.0, 0.6, 6.0)
    assert load_pretrained(directory).objective.name == "edm"


@pytest.mark.skipif(
    "EDMEulerScheduler" not in BY_CLASS_NAME, reason="jaxdiff's EDMEulerScheduler is not registered (yet)"
)
def test_edm_exported_pipeline_samples_as_jaxdiffs_edm_euler(tmp_path):
    diffusion = {"objective": "edm", "sigma_min": 0.005, "sigma_max": 40.0, "sigma_data": 0.6, "rho": 6.0}
    _export_and_compare(
        tmp_path, diffusion, "EDMEulerScheduler", 6, "EDMEulerScheduler", "ConsistencyModelPipeline"
    )
