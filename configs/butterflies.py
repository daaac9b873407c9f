"""The Hugging Face Diffusion Models Class recipe (unit 1): 32x32 butterflies, the course's UNet.

Source: the Hugging Face dataset ``huggan/smithsonian_butterflies_subset`` (needs the optional
``datasets`` package and a network connection the first time), or any folder of images:
``--config.data.source=folder:/path/to/butterflies``.

The course's model: ``UNet2DModel(sample_size=32, layers_per_block=2, block_out_channels=(64, 128, 128,
256), down_block_types=(Down, Down, AttnDown, AttnDown))``, trained on epsilon with the
``squaredcos_cap_v2`` schedule, AdamW at lr 4e-4, batch 64, random horizontal flips.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
    config = default.get_config()

    config.data.source = "hf:huggan/smithsonian_butterflies_subset"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True
    config.data.center_crop = True

    model = config.model
    model.sample_size = 32
    model.in_channels = 3
    model.out_channels = 3
    model.layers_per_block = 2
    model.block_out_channels = (64, 128, 128, 256)
    model.down_block_types = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")

    config.diffusion.num_train_timesteps = 1000
    config.diffusion.beta_schedule = "squaredcos_cap_v2"
    config.diffusion.prediction_type = "epsilon"

    train = config.train
    train.batch_size = 64
    train.num_steps = 5_000  # ~30 epochs of the 1,000-image subset (the course trains 30 epochs)
    train.learning_rate = 4e-4
    train.lr_schedule = "constant"  # the course's plain AdamW
    train.warmup_steps = 0
    # torch.optim.AdamW's defaults, as in the course.
    train.weight_decay = 0.01
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.adam_eps = 1e-8
    train.grad_clip = 0.0
    train.ema_decay = 0.999
    train.log_every = 50
    train.sample_every = 1000
    train.checkpoint_every = 1000

    config.sample.sampler = "ddim"
    config.sample.num_inference_steps = 50
    config.sample.num_samples = 16
    config.sample.batch_size = 16
    return config
