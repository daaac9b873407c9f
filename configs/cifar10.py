"""CIFAR-10 (TFDS catalog) with the DDPM paper's setup (Ho et al. 2020, appendix B).

35.7M-parameter UNet: channels 128 x (1, 2, 2, 2), two residual blocks per resolution, self-attention at
16x16, dropout 0.1; T = 1000 linear betas 1e-4 .. 0.02, epsilon prediction; Adam at lr 2e-4 with a 5,000
step linear warm-up, batch 128, EMA 0.9999, 800k steps, random horizontal flips. (Two deviations from the
paper's TensorFlow code: diffusers' UNet2DModel blocks and its GroupNorm(32) everywhere.)

The data must be prepared by TFDS (``tfds build cifar10``, or ``--config.data.download=True``); use
``--config.data.data_dir=gs://...`` on a TPU VM.
"""

from jaxdiff.run_config import default_config


def get_config():
    config = default_config()

    config.data.source = "tfds:cifar10:train"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True

    model = config.model
    model.block_out_channels = (128, 256, 256, 256)
    # Resolutions 32, 16, 8, 4: attention at 16x16 (the second level) only.
    model.down_block_types = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    model.up_block_types = ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    model.attention_head_dim = None  # one head over all channels, as in the paper
    model.dropout = 0.1

    train = config.train
    train.batch_size = 128
    train.num_steps = 800_000
    train.learning_rate = 2e-4
    train.lr_schedule = "constant"
    train.warmup_steps = 5000
    train.weight_decay = 0.0
    train.adam_b1 = 0.9
    # The paper's plain EMA: decay 0.9999 from the second update on (the first copies the weights).
    train.ema_min_decay = 0.9999
    train.ema_use_warmup = False
    train.log_every = 100
    train.sample_every = 10_000
    train.checkpoint_every = 5_000

    config.sample.num_inference_steps = 100
    return config
