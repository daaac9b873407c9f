"""The digits with DDPM: scikit-learn's handwritten digits (8x8, upsampled to 16x16, grayscale):
the 1,397 of the ``digits`` source's train split; the 400 others are held out for the score.

``python train.py --config configs/digits_ddpm.py``: the offline first run as it was before the recipes were
compared (``benchmarks/recipes.py``): epsilon prediction on the cosine schedule, sampled by DDIM (50 steps),
exported as a ``DDPMPipeline`` that every diffusers scheduler can sample. ``configs/digits.py`` (EDM on the
same UNet, optimiser and data) gives better digits for the same CPU time. ``digits_edm.py`` and
``digits_flow.py`` extend this file and change only the objective and the sampler.
"""

from jaxdiff.run_config import default_config


def get_config():
    config = default_config()  # digits at 16x16, grayscale; the UNet2DModel (32, 64, 64)

    # A small UNet2DModel: 16 -> 8 -> 4 pixels, self-attention only at 4x4 (~1.1M parameters).
    config.model.layers_per_block = 1

    config.diffusion.beta_schedule = "squaredcos_cap_v2"

    train = config.train
    train.num_steps = 1500
    train.learning_rate = 1e-3
    train.warmup_steps = 100
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    train.ema_decay = 0.999
    train.log_every = 25
    train.sample_every = 500
    train.checkpoint_every = 250
    # The quality of 1,200 EMA samples at the end, in the offline digit-classifier space: the mean FD of three
    # sets of 400, the size of the held-out set and of the floor's draws (one set alone is noisy).
    train.eval_every = 1500
    train.eval_num_samples = 1200
    return config
