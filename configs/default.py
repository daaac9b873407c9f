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

A config extends this one as ``from jaxdiff.run_config import default_config`` (no path tricks).
"""

import ml_collections

from jaxdiff.run_config import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
