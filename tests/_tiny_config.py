"""A tiny run config for the scale / multi-process / resume / bad-input tests.

A one-level ``UNet2DModel`` (8 channels, GroupNorm, time embedding, dropout on; ~10k parameters; it
compiles in half the time of a two-level one) on scikit-learn's digits at their native 8x8, global
batch 8. ``num_steps`` is large and the learning rate constant, so every test compiles the same train
step (the tests share a persistent compilation cache) and stops its runs by ``stop_at_step`` or a
signal. Use it as ``train.py --config tests/_tiny_config.py`` or import it.
"""

from jaxdiff.run_config import default_config


def get_config():
    config = default_config()
    config.seed = 0

    config.data.source = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.num_threads = 1
    config.data.prefetch_buffer_size = 2

    model = config.model
    model.sample_size = 8
    model.in_channels = 1
    model.out_channels = 1
    model.layers_per_block = 1
    model.block_out_channels = (8,)
    model.down_block_types = ("DownBlock2D",)
    model.up_block_types = ("UpBlock2D",)
    model.norm_num_groups = 4
    model.add_attention = False
    model.dropout = 0.1  # exercises the per-step dropout key in resume and sharding tests

    train = config.train
    train.batch_size = 8
    train.num_steps = 1000
    train.learning_rate = 1e-3
    train.lr_schedule = "constant"
    train.warmup_steps = 0
    train.log_every = 1
    train.checkpoint_every = 2
    train.sample_every = 0
    train.keep_checkpoints = 3

    sample = config.sample
    sample.sampler = "ddim"
    sample.num_inference_steps = 2
    sample.num_samples = 4
    sample.batch_size = 4
    return config
