"""The course's "Diffusion Models from Scratch" run: BasicUNet trained to predict the clean image.

``python train.py --config configs/from_scratch.py``

As in the Hugging Face Diffusion Models Class (unit 1, chapter 2): each image is mixed with uniform noise by
a random amount, ``x * (1 - amount) + noise * amount`` (``jaxdiff.corruption``), the small 5x5-conv
``BasicUNet`` (no timestep input) predicts the clean image with an MSE loss, Adam at lr 1e-3 with batches of
128, and sampling is the course's 40-step "move 1 / (n_steps - i) of the way to the prediction" loop. The
course trains 3 epochs of MNIST (28x28); here the bundled digits are upsampled to 28x28 and ``num_steps``
is the same number of updates (3 x 60000 / 128, about 1400).

Differences from the course, both harmless for this objective: images are in ``[-1, 1]`` (the course uses
``[0, 1]``), and there is no EMA in the course, so ``ema_decay = 0`` makes the EMA weights the raw weights.
"""

import ml_collections

from jaxdiff.run_config import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()

    config.data.source = "digits"
    config.data.image_size = 28  # MNIST's size; BasicUNet halves it twice, so any multiple of 4 works
    config.data.channels = 1

    # BasicUNet takes only its channel counts (and sample_size as metadata); the UNet2DModel keys of the
    # default config would be rejected, so the section is replaced rather than edited.
    config.model = ml_collections.ConfigDict({"_class_name": "BasicUNet"})
    config.model.sample_size = config.data.get_ref("image_size")
    config.model.in_channels = config.data.get_ref("channels")
    config.model.out_channels = config.data.get_ref("channels")

    config.diffusion.objective = "from_scratch"

    train = config.train
    train.batch_size = 128
    train.num_steps = 1400
    # torch.optim.Adam(lr=1e-3): constant rate, no warm-up, no weight decay, no clipping, default betas.
    train.learning_rate = 1e-3
    train.lr_schedule = "constant"
    train.warmup_steps = 0
    train.weight_decay = 0.0
    train.grad_clip = 0.0
    train.adam_b1 = 0.9
    train.adam_b2 = 0.999
    train.ema_decay = 0.0
    train.log_every = 50
    train.sample_every = 500
    train.checkpoint_every = 500

    # The course samples 64 digits with 40 steps of its simple iterative sampler.
    config.sample.num_inference_steps = 40
    config.sample.num_samples = 64
    config.sample.batch_size = 64
    return config
