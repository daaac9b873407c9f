"""The base config: every section and key, with diffusers-style defaults. Other configs extend it.

Run with ``python train.py --config configs/default.py``; override any key on the command line, e.g.
``--config.train.batch_size=32 --config.model.block_out_channels="(32,64,128)"``. An unknown key or a
value of the wrong type is an error.

Sections:
  seed        the one seed of a run: parameter init, data order, noise and timesteps.
  data        the input pipeline (``jaxdiff.data``): source, image size, channels, augmentation.
  model       a diffusers ``UNet2DModel`` config (``_class_name`` ``"UNet2DModel"`` or ``"BasicUNet"``).
  diffusion   the training objective and the diffusers scheduler keys of the noise schedule.
  train       optimisation, EMA, precision, logging / sampling / checkpoint cadence, mesh.
  sample      how the periodic sample grids (and ``sample.py`` by default) draw images.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # -- data: jaxdiff.data.options documents every key -----------------------------------------------
    config.data = data = ml_collections.ConfigDict()
    data.source = "digits"  # digits | tfds:NAME[:split] | folder:PATH | hf:NAME[:split]
    data.image_size = 16
    data.channels = 1
    data.random_flip = False
    data.center_crop = True
    data.data_dir = config_dict.placeholder(str)  # TFDS data_dir (local or gs://), or the HF cache
    data.image_key = "image"
    data.label_key = "label"
    data.download = False  # tfds: let TFDS download and prepare a missing dataset
    data.num_threads = 2  # threads decoding batches ahead of the train loop
    data.prefetch_buffer_size = 4
    data.num_workers = 0  # grain worker processes (0: decode in this process)

    # -- model: diffusers UNet2DModel keys (same names, same meaning) -----------------------------------
    config.model = model = ml_collections.ConfigDict()
    model["_class_name"] = "UNet2DModel"
    model.sample_size = 16  # = data.image_size
    model.in_channels = 1  # = data.channels
    model.out_channels = 1  # = data.channels (2x for learned variance)
    model.layers_per_block = 2
    model.block_out_channels = (32, 64, 64)
    model.down_block_types = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    model.up_block_types = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    model.mid_block_type = "UNetMidBlock2D"
    model.attention_head_dim = 8
    model.norm_num_groups = 32
    model.norm_eps = 1e-5
    model.dropout = 0.0
    model.act_fn = "silu"
    model.time_embedding_type = "positional"
    model.flip_sin_to_cos = True
    model.freq_shift = 0
    model.downsample_type = "conv"
    model.upsample_type = "conv"
    model.resnet_time_scale_shift = "default"
    model.add_attention = True
    model.class_embed_type = config_dict.placeholder(str)
    model.num_class_embeds = config_dict.placeholder(int)  # set for a class-conditional model

    # -- diffusion: the objective and the DDPMScheduler config it trains for -----------------------------
    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.objective = "ddpm"  # ddpm | from_scratch (the course's corruption objective)
    diffusion.num_train_timesteps = 1000
    diffusion.beta_schedule = "linear"  # linear | scaled_linear | squaredcos_cap_v2 | sigmoid
    diffusion.beta_start = 0.0001
    diffusion.beta_end = 0.02
    diffusion.rescale_betas_zero_snr = False
    diffusion.prediction_type = "epsilon"  # epsilon | sample | v_prediction
    diffusion.variance_type = "fixed_small"  # for DDPM sampling
    diffusion.clip_sample = True
    diffusion.clip_sample_range = 1.0
    diffusion.timestep_spacing = "leading"
    diffusion.steps_offset = 0
    diffusion.loss_weighting = "none"  # none | min_snr (min-SNR-gamma, Hang et al. 2023)
    diffusion.snr_gamma = 5.0

    # -- train ------------------------------------------------------------------------------------------
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 64  # global: split over all devices of all processes
    train.num_steps = 10_000
    train.learning_rate = 1e-4
    train.lr_schedule = "cosine"  # constant | cosine | linear (each after the warm-up)
    train.warmup_steps = 500
    train.weight_decay = 1e-6
    train.adam_b1 = 0.95
    train.adam_b2 = 0.999
    train.adam_eps = 1e-8
    train.grad_clip = 1.0  # global-norm clipping; 0 turns it off
    # EMA, diffusers' EMAModel: decay = min(ema_decay, 1 - (1 + step / ema_inv_gamma) ** -ema_power)
    # with ema_use_warmup, else min(ema_decay, (1 + step) / (10 + step)); never below ema_min_decay.
    train.ema_decay = 0.9999
    train.ema_min_decay = 0.0
    train.ema_use_warmup = True
    train.ema_inv_gamma = 1.0
    train.ema_power = 0.75
    train.ema_update_after_step = 0
    train.mixed_precision = "no"  # no | bf16 (bfloat16 compute, float32 parameters)
    train.log_every = 50  # metrics.jsonl, TensorBoard and the progress bar
    train.sample_every = 1000  # an EMA sample grid in workdir/samples/ (0: only at the end)
    train.checkpoint_every = 1000  # (0: only at the end and on SIGTERM)
    train.keep_checkpoints = 3
    train.checkpoint_dir = ""  # default <workdir>/checkpoints; on several hosts a shared path (gs://...)
    train.async_checkpointing = True
    train.fsdp = 1  # >1 shards parameters over an "fsdp" mesh axis of this size
    # Images per device per forward/backward pass; the step averages the passes' gradients (the same
    # update). 0: 16 on a CPU for large activations (see jaxdiff.training.loop.microbatch_count), else 1 pass.
    train.microbatch_size = 0

    # -- sample: the periodic grids during training and sample.py's defaults ---------------------------------
    config.sample = sample = ml_collections.ConfigDict()
    sample.sampler = "ddim"  # ddpm | ddim | dpm++ | euler
    sample.num_inference_steps = 50
    sample.num_samples = 64
    sample.eta = 0.0  # DDIM only
    sample.seed = 0
    sample.batch_size = 64
    # Images per device per model evaluation while sampling. 0: passes on a CPU once the first level's
    # activations of the batch pass 4 MiB (see jaxdiff.models.passes), else the whole batch at once.
    sample.microbatch_size = 0
    return config
