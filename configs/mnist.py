"""MNIST from the TFDS catalog (28x28 grayscale) with the course's MNIST UNet2DModel.

The data must be prepared by TFDS (``tfds build mnist`` or ``--config.data.download=True`` with network,
``--config.data.data_dir`` for a local or ``gs://`` folder). The model is the course's MNIST
UNet2DModel: ``block_out_channels=(32, 64, 64)``, attention at the two lowest resolutions,
``layers_per_block=2``; epsilon prediction with the ``squaredcos_cap_v2`` schedule.
"""

from jaxdiff.run_config import default_config


def get_config():
    config = default_config()

    config.data.source = "tfds:mnist:train"
    config.data.image_size = 28

    model = config.model
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")

    config.diffusion.beta_schedule = "squaredcos_cap_v2"

    train = config.train
    train.batch_size = 128
    train.num_steps = 20_000
    train.learning_rate = 1e-3
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    train.ema_decay = 0.9995
    train.sample_every = 2000
    train.checkpoint_every = 2000
    return config
