"""The offline first run: scikit-learn's 1,797 handwritten digits (8x8, upsampled to 16x16, grayscale).

``python train.py --config configs/digits.py`` trains and scores in under 10 minutes on a 2-core CPU, writes
grids of digits to ``workdirs/digits/samples/``, prints their Fréchet distance to held-out real digits (and
its ratio to the real-vs-real floor), then writes a diffusers pipeline to ``workdirs/digits/diffusers/``.
No download: the images ship with scikit-learn.

The recipe: EDM (``digits_edm.py``: preconditioning, log-normal noise levels, EDM's loss weighting) on the
small UNet, for about 400 s of training on 2 cores, sampled with EDM's Heun sampler (18 steps, 35 model
evaluations). ``benchmarks/recipes.py`` compares it at equal CPU time with DDPM (``digits_ddpm.py``, with
epsilon or v-prediction), flow matching and a diffusers user's recipe; benchmarks/RESULTS.md has the
figures, and says why the score this run prints is optimistic (its training set includes the scored digits).
"""

import ml_collections

from configs import digits_edm


def get_config() -> ml_collections.ConfigDict:
    config = digits_edm.get_config()
    config.train.num_steps = 2500
    config.train.sample_every = 1250
    config.train.eval_every = config.train.num_steps  # score the samples at the end
    return config
