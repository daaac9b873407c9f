"""jaxdiff: diffusion models in JAX/Flax with numerical parity to Hugging Face diffusers.

Submodules (one idea each):
  schedules   noise schedules and the forward (noising) process
  losses      training targets and loss weighting
  corruption  the course's "from scratch" corruption process, loss and sampler
  samplers    DDPM / DDIM / DPM-Solver++ / Euler as pure functions, one lax.scan loop
  models      Flax NNX UNet2D (diffusers UNet2DModel config) and the course's BasicUNet
  interop     diffusers weight and pipeline conversion, both ways
  data        grain input pipelines (digits, TFDS, image folders, HF datasets)
  training    sharded train step, EMA, optimizer, the training loop
  checkpointing  orbax CheckpointManager with the data iterator
  cpu_tuning  faster XLA CPU flags, added to XLA_FLAGS at import unless the user set them
              (opt out: JAXDIFF_NO_XLA_TUNING=1)
  allocator   train.py / sample.py re-run themselves under mimalloc (XLA re-allocates its CPU
              arena every step; opt out: JAXDIFF_NO_MIMALLOC=1)
"""

# Before anything creates a JAX backend: XLA reads XLA_FLAGS once, at backend creation.
from jaxdiff.cpu_tuning import apply_cpu_defaults as _apply_cpu_defaults

_apply_cpu_defaults()

__version__ = "0.1.0"
