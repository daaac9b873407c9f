"""jaxdiff: diffusion models in JAX/Flax with numerical parity to Hugging Face diffusers.

Modules (one idea each; docs/architecture.md draws how they depend on each other):
  schedules      noise schedules and the forward (noising) process
  losses         training targets and loss weighting
  corruption     the course's "from scratch" corruption process, loss and sampler
  objectives     the registry of training objectives (ddpm, edm, flow, from_scratch)
  denoisers      parametrisations: the network as a denoiser (c_skip, c_out, c_in, c_noise), targets
  samplers       diffusers schedulers as pure functions, one registry of names, one lax.scan loop
  models         Flax NNX UNet2D (diffusers UNet2DModel config) and the course's BasicUNet
  execution      platform-specific execution: CPU convolutions, passes, XLA flags, the allocator
  interop        diffusers weight and pipeline conversion, both ways
  data           grain input pipelines (digits, TFDS, image folders, HF datasets)
  sharding       the device mesh and the shardings of states and batches
  run_config     the typed, validated run config and the default every config extends
  checkpointing  orbax CheckpointManager with the data iterator; partial restore of the weights
  workdir        one run per workdir (a lock) and workdir writes that never follow symlinks
  inference      load a workdir or a diffusers folder, sample, export (never imports training)
  training       optimizer, EMA, the sharded train step, the train loop
  grids          sample grids and denoising strips as PNG
  cli            what train.py and sample.py share: one-line errors, multi-host start-up
"""

# Before anything creates a JAX backend: XLA reads XLA_FLAGS once, at backend creation.
from jaxdiff.execution.xla_flags import apply_cpu_defaults as _apply_cpu_defaults

_apply_cpu_defaults()

__version__ = "0.1.0"
