"""The base config: every section and key at its default. Other configs extend it and set what differs.

Run with ``python train.py --config configs/default.py``; override any key on the command line, e.g.
``--config.train.batch_size=32 --config.model.block_out_channels="(32,64,128)"``. An unknown key or a
value of the wrong type is an error.

Sections (``jaxdiff.run_config`` types and checks them; ``README.md`` lists every key):
  seed        the one seed of a run: parameter init, data order, noise and timesteps.
  data        the input pipeline (``jaxdiff.data.options``): source, image size, channels, augmentation.
  model       a diffusers ``UNet2DModel`` config (``_class_name`` ``"UNet2DModel"`` or ``"BasicUNet"``);
              ``sample_size``, ``in_channels`` and ``out_channels`` follow ``data.image_size`` and
              ``data.channels`` unless a config sets them.
  diffusion   the training objective (``ddpm`` | ``edm`` | ``flow`` | ``from_scratch``) and the diffusers
              scheduler keys of the noise schedule it trains for.
  train       optimisation, EMA, precision, logging / sampling / checkpoint cadence, mesh, microbatches.
  sample      how the periodic sample grids (and ``sample.py`` by default) draw images.

Class-conditioning and fine-tuning (all off by default):
  data.num_classes     None (unconditional) or K, the number of classes: labels must be 0..K-1 (digits:
                       0..9; tfds / hf: ``data.label_key``; folder: the sorted class sub-directories, as
                       torchvision's ImageFolder). The model then gets ``num_class_embeds = K + 1``:
                       id K is the null label (label dropout, classifier-free guidance's unconditional
                       half). ``model.num_class_embeds`` alone (no ``data.num_classes``) still makes a
                       conditional model with no null label.
  train.cond_drop_prob label dropout for classifier-free guidance, in [0, 1) (e.g. 0.1): each training
                       label becomes the null label with this probability (needs ``data.num_classes``).
  train.init_from      "" or a ``train.py`` workdir (its EMA weights) or a diffusers ``UNet2DModel`` /
                       pipeline folder: a fresh run starts from those weights (parameters and EMA) with
                       a fresh optimizer at step 0, on its own data and diffusion options; the model
                       config must be the same (``sample_size`` aside). A workdir that already has a
                       checkpoint resumes from it instead.

A config extends this one as ``from jaxdiff.run_config import default_config`` (no path tricks).
"""

import ml_collections

from jaxdiff.run_config import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
