"""The offline first run: scikit-learn's handwritten digits (8x8, upsampled to 16x16, grayscale), with labels.

``python train.py --config configs/digits.py`` trains and scores in under 10 minutes on a 2-core CPU, writes
grids of digits to ``workdirs/digits/samples/`` (one row per digit), prints their Fréchet distance to
held-out real digits (and its ratio to the real-vs-real floor), then writes a diffusers pipeline to
``workdirs/digits/diffusers/``. No download: the images ship with scikit-learn. It trains on the ``digits``
source's train split (1,397 digits); the 400 of its ``test`` split are held out for the score.

The recipe, chosen by ``benchmarks/recipes.py`` (benchmarks/RESULTS.md): EDM (``digits_edm.py``:
preconditioning, log-normal noise levels, EDM's loss weighting) on the small UNet, class-conditional (the
digits' labels: ``data.num_classes = 10``; one label in ten dropped to the null label, so the model also
draws any digit and classifier-free guidance works: ``digits_cond.py``), 2,500 steps at batch 64, sampled
with EDM's Heun sampler (18 steps, 35 model evaluations), classes in turn and no guidance. With the
digits' labels the samples come out as good as real digits in the score, where the same recipe without them
(``digits_edm.py``) does not.
"""

import ml_collections

from configs import digits_edm


def get_config() -> ml_collections.ConfigDict:
    config = digits_edm.get_config()
    config.data.num_classes = 10  # the UNet gets 11 class embeddings: 0..9 and the null label 10
    config.train.cond_drop_prob = 0.1
    config.sample.guidance_scale = 1.0  # classes in turn, no guidance: the score's setting
    config.train.num_steps = 2500
    config.train.sample_every = 1250
    config.train.eval_every = config.train.num_steps  # score the samples at the end
    return config
