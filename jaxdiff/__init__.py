"""jaxdiff: diffusion models in JAX/Flax with numerical parity to Hugging Face diffusers.

Submodules (one idea each):
  schedules   noise schedules and the forward (noising) process
  losses      training targets and loss weighting
  samplers    DDPM / DDIM / DPM-Solver++ / Euler as pure functions, one lax.scan loop
  models      Flax NNX UNet2D (diffusers UNet2DModel config) and the course's BasicUNet
  interop     diffusers weight and pipeline conversion, both ways
  data        grain input pipelines (digits, TFDS, image folders, HF datasets)
  training    sharded train step, EMA, optimizer, the training loop
  checkpointing  orbax CheckpointManager with the data iterator
"""

__version__ = "0.1.0"
