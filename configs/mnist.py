"""MNIST from the TFDS catalog (28x28 grayscale) with the course's MNIST UNet2DModel.

The data must be prepared by TFDS (``tfds build mnist`` or ``--config.data.download=True`` with network,
``--config.data.data_dir`` for a local or ``gs://`` folder). The model is the course's MNIST
UNet2DModel: ``block_out_channels=(32, 64, 64)``, attention at the two lowest resolutions,
``layers_per_block=2``; epsilon prediction with the ``squaredcos_cap_v2`` schedule.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
    config = default.get_config()

    config.data.source = "tfds:mnist:train"
    config.data.image_size = 28
    config.data.channels = 1

    model = config.model
    model.sample_size = 28
    model.in_channels = 1
    model.out_channels = 1
    model.layers_per_block = 2
    model.block_out_channels = (32, 64, 64)
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")

    config.diffusion.beta_schedule = "squaredcos_cap_v2"
    config.diffusion.prediction_type = "epsilon"

    train = config.train
    train.batch_size = 128
    train.num_steps = 20_000
    train.learning_rate = 1e-3
    train.warmup_steps = 500
    train.lr_schedule = "cosine"
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    train.ema_decay = 0.9995
    train.sample_every = 2000
    train.checkpoint_every = 2000
    return config
