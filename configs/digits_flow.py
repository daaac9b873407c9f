"""The digits recipe of ``configs/digits_ddpm.py`` trained with flow matching / rectified flow.

``python train.py --config configs/digits_flow.py``

The same UNet2DModel (32, 64, 64), optimiser, EMA, steps and evaluation as ``configs/digits_ddpm.py``, so the
two compare at equal CPU time; only the objective differs: ``x_s = (1 - s) x0 + s noise``, the network
predicts the velocity ``noise - x0`` at time input ``1000 s``, training times logit-normal (SD3's
``m = 0, s = 1``, no shift), sampled with ``FlowMatchEulerDiscreteScheduler`` (50 Euler steps). The
diffusers export is a ``FlowMatchEulerDiscreteScheduler`` pipeline.
"""

import ml_collections

from configs import digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    config = digits_ddpm.get_config()  # the same data, UNet, optimiser, EMA, steps and evaluation

    diffusion = config.diffusion
    diffusion.objective = "flow"
    diffusion.time_sampling = "logit_normal"
    diffusion.logit_mean = 0.0
    diffusion.logit_std = 1.0
    diffusion.shift = 1.0

    config.sample.sampler = "flow_euler"
    config.sample.num_inference_steps = 50
    return config
