"""The offline first run: scikit-learn's 1,797 handwritten digits (8x8, upsampled to 16x16, grayscale).

``python train.py --config configs/digits.py`` finishes in about 10 minutes on a 2-core CPU and writes
grids of recognisable digits to ``workdirs/digits/samples/`` (EMA weights, DDIM 50 steps), then a
diffusers pipeline to ``workdirs/digits/diffusers/``. No download: the images ship with scikit-learn.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
    config = default.get_config()
    config.seed = 0

    config.data.source = "digits"
    config.data.image_size = 16
    config.data.channels = 1

    # A small UNet2DModel: 16 -> 8 -> 4 pixels, self-attention only at 4x4 (~1.1M parameters).
    model = config.model
    model.sample_size = 16
    model.in_channels = 1
    model.out_channels = 1
    model.layers_per_block = 1
    model.block_out_channels = (32, 64, 64)
    model.down_block_types = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    model.attention_head_dim = 8
    model.norm_num_groups = 32

    config.diffusion.beta_schedule = "squaredcos_cap_v2"
    config.diffusion.prediction_type = "epsilon"

    train = config.train
    train.batch_size = 64
    train.num_steps = 1500
    train.learning_rate = 1e-3
    train.lr_schedule = "cosine"
    train.warmup_steps = 100
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.grad_clip = 1.0
    train.ema_decay = 0.999
    train.ema_use_warmup = True
    train.ema_power = 0.75
    train.log_every = 25
    train.sample_every = 500
    train.checkpoint_every = 250

    config.sample.sampler = "ddim"
    config.sample.num_inference_steps = 50
    config.sample.num_samples = 64
    config.sample.batch_size = 64
    return config
