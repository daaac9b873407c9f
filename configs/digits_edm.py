"""The digits recipe of ``configs/digits_ddpm.py`` trained with EDM (Karras et al. 2022) instead of DDPM.

``python train.py --config configs/digits_edm.py``

The same UNet2DModel (32, 64, 64), optimiser, EMA, steps and evaluation as ``configs/digits_ddpm.py``, so the
two compare at equal CPU time; only the objective differs: the network is wrapped in EDM's
preconditioning (``sigma_data = 0.5`` for images in ``[-1, 1]``), trained on log-normal noise levels
(``P_mean = -1.2``, ``P_std = 1.2``) with EDM's loss weighting, and sampled with EDM's Heun sampler
(18 steps, 35 model evaluations; ``sample.py --sampler edm``). The diffusers export is an
``EDMEulerScheduler`` pipeline.
"""

import ml_collections

from configs import digits_ddpm


def get_config() -> ml_collections.ConfigDict:
    config = digits_ddpm.get_config()  # the same data, UNet, optimiser, EMA, steps and evaluation

    diffusion = config.diffusion
    diffusion.objective = "edm"
    diffusion.sigma_data = 0.5
    diffusion.p_mean = -1.2
    diffusion.p_std = 1.2
    diffusion.sigma_min = 0.002
    diffusion.sigma_max = 80.0
    diffusion.rho = 7.0

    config.sample.sampler = "edm"
    config.sample.num_inference_steps = 18  # Heun: 2 * 18 - 1 = 35 model evaluations
    return config
