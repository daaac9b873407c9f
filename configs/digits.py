"""The offline first run: scikit-learn's 1,797 handwritten digits (8x8, upsampled to 16x16, grayscale).

``python train.py --config configs/digits.py`` trains and scores in under 10 minutes on a 2-core CPU, writes
grids of digits to ``workdirs/digits/samples/``, prints their Fréchet distance to held-out real digits (and
its ratio to the real-vs-real floor), then writes a diffusers pipeline to ``workdirs/digits/diffusers/``.
No download: the images ship with scikit-learn.

The recipe is the one that gave the best digits for the same CPU time when ``benchmarks/recipes.py`` compared
DDPM (``digits_ddpm.py``), EDM, flow matching and a diffusers user's recipe (benchmarks/RESULTS.md): EDM
(``digits_edm.py``: preconditioning, log-normal noise levels, EDM's loss weighting) on the small UNet, trained
for as many steps as fit the budget, sampled with EDM's Heun sampler.
"""

import ml_collections

from configs import digits_edm


def get_config() -> ml_collections.ConfigDict:
    config = digits_edm.get_config()
    config.train.num_steps = 2500
    config.train.sample_every = 1250
    config.train.eval_every = config.train.num_steps  # score the samples at the end
    return config
