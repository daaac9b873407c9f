"""CIFAR-10 with the EDM paper's recipe (Karras et al. 2022, config F of Table 2, unconditional DDPM++),
ready for an accelerator: ``python train.py --config configs/cifar10_edm.py``.

What is the paper's: EDM preconditioning with ``sigma_data = 0.5``, log-normal training noise
(``P_mean = -1.2``, ``P_std = 1.2``) and EDM's loss weighting; Adam at lr 1e-3 (betas 0.9 / 0.999,
eps 1e-8, no weight decay, no gradient clipping), the learning rate ramped up over 10M images, batch 512,
200M images of training (390,625 steps); EMA with a half-life of 500k images; dropout 0.13; horizontal
flips; sampling with EDM's deterministic Heun sampler, 18 steps = 35 model evaluations,
``sigma`` from 80 to 0.002 with ``rho = 7``.

Deviations (diffusers' ``UNet2DModel`` cannot express DDPM++ exactly):
- the network: ``UNet2DModel`` (256, 256, 256) at 32, 16, 8 pixels with 4 residual blocks per level and
  attention (64-channel heads) at 16x16, as DDPM++'s channel multipliers (2, 2, 2) x 128 and
  attention resolution; but its stem is 256 channels (DDPM++: 128), no ``sqrt(1/2)`` skip scaling, its
  own up/down-sampling convolutions instead of DDPM++'s ``[1, 1]`` resampling filters and residual
  projections, and GroupNorm eps 1e-5 (EDM: 1e-6);
- the EMA: a constant decay ``0.5 ** (512 / 500k)`` (a 500k-image half-life at batch 512) after diffusers'
  warm-up; EDM ramps the half-life with the number of images seen instead;
- no non-leaking augmentation (EDM: probability 0.12 with the augmentation labels fed to the network),
  only horizontal flips; this costs the paper's FID a little (their ablation, Table 2 row F vs E);
- a 10M-image warm-up is ``19,531`` steps of this linear warm-up.
"""

import ml_collections

from jaxdiff.run_config import default_config

BATCH = 512


def get_config() -> ml_collections.ConfigDict:
    config = default_config()

    config.data.source = "tfds:cifar10:train"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True

    model = config.model
    model.block_out_channels = (256, 256, 256)
    model.layers_per_block = 4
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    model.up_block_types = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    model.attention_head_dim = 64
    model.dropout = 0.13

    diffusion = config.diffusion
    diffusion.objective = "edm"
    diffusion.sigma_data = 0.5
    diffusion.p_mean = -1.2
    diffusion.p_std = 1.2
    diffusion.sigma_min = 0.002
    diffusion.sigma_max = 80.0
    diffusion.rho = 7.0

    train = config.train
    train.batch_size = BATCH
    train.num_steps = 200_000_000 // BATCH
    train.learning_rate = 1e-3
    train.lr_schedule = "constant"
    train.warmup_steps = 10_000_000 // BATCH
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.adam_eps = 1e-8
    train.grad_clip = 0.0
    train.ema_decay = 0.5 ** (BATCH / 500_000)
    train.log_every = 100
    train.sample_every = 10_000
    train.checkpoint_every = 5_000

    config.sample.sampler = "edm"
    config.sample.num_inference_steps = 18  # Heun: 35 model evaluations
    return config
