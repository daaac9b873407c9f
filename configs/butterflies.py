"""The Hugging Face Diffusion Models Class recipe (unit 1): 32x32 butterflies, the course's UNet.

Source: the Hugging Face dataset ``huggan/smithsonian_butterflies_subset`` (needs the optional
``datasets`` package and a network connection the first time), or any folder of images:
``--config.data.source=folder:/path/to/butterflies``.

The course's model: ``UNet2DModel(sample_size=32, layers_per_block=2, block_out_channels=(64, 128, 128,
256), down_block_types=(Down, Down, AttnDown, AttnDown))``, trained on epsilon with the
``squaredcos_cap_v2`` schedule, AdamW at lr 4e-4, batch 64, random horizontal flips.
"""

from jaxdiff.run_config import default_config


def get_config():
    config = default_config()

    config.data.source = "hf:huggan/smithsonian_butterflies_subset"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True

    model = config.model
    model.block_out_channels = (64, 128, 128, 256)
    model.down_block_types = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")

    config.diffusion.beta_schedule = "squaredcos_cap_v2"

    train = config.train
    train.num_steps = 5_000  # ~30 epochs of the 1,000-image subset (the course trains 30 epochs)
    train.learning_rate = 4e-4
    train.lr_schedule = "constant"  # the course's plain AdamW
    train.warmup_steps = 0
    # torch.optim.AdamW's defaults, as in the course.
    train.weight_decay = 0.01
    train.adam_b1 = 0.9
    train.grad_clip = 0.0
    train.ema_decay = 0.999

    config.sample.num_samples = 16
    config.sample.batch_size = 16
    return config
