"""Checks on a whole run config (``configs/default.py``'s sections) and what the run derives from it.

``validate_config`` raises ``UserError`` with a one-line message naming the first bad key, its value and
what is allowed. It checks each section (the data and model sections through their own validators) and
the keys that must agree across sections (image size and channels of data and model, and so on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections

from jaxdiff.errors import UserError

__all__ = [
    "SECTIONS",
    "TRAIN_KEYS",
    "DIFFUSION_KEYS",
    "SAMPLE_KEYS",
    "SAMPLER_NAMES",
    "MIXED_PRECISION",
    "validate_config",
    "validate_sampling",
    "compute_dtype",
    "class_conditional",
    "model_fingerprint",
    "normalized_model_config",
    "config_to_json",
    "load_config_json",
]

SECTIONS = ("data", "model", "diffusion", "train", "sample")

# The keys of the train / diffusion / sample sections (configs/default.py sets each one). The data and
# model sections are checked by jaxdiff.data and jaxdiff.models.
TRAIN_KEYS = (
    "batch_size",
    "num_steps",
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "weight_decay",
    "adam_b1",
    "adam_b2",
    "adam_eps",
    "grad_clip",
    "ema_decay",
    "ema_min_decay",
    "ema_use_warmup",
    "ema_inv_gamma",
    "ema_power",
    "ema_update_after_step",
    "mixed_precision",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "checkpoint_dir",
    "async_checkpointing",
    "fsdp",
    "microbatch_size",
)
DIFFUSION_KEYS = (
    "objective",
    "loss_weighting",
    "snr_gamma",
    # DDPMScheduler's config keys
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
)
SAMPLE_KEYS = (
    "sampler",
    "num_inference_steps",
    "num_samples",
    "eta",
    "seed",
    "batch_size",
    "microbatch_size",
)
_SECTION_KEYS = {"train": TRAIN_KEYS, "diffusion": DIFFUSION_KEYS, "sample": SAMPLE_KEYS}
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++", "euler")
MIXED_PRECISION = ("no", "bf16")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed; {allowed}")


def normalized_model_config(config: Any) -> dict[str, Any]:
    """The model section validated and filled with diffusers' defaults (``jaxdiff.models``)."""
    from jaxdiff.models import normalize_config

    return normalize_config(config.model)


def model_fingerprint(config: Any) -> str:
    """Hash of the normalized model config: equal exactly when two runs build the same parameter tree."""
    from jaxdiff.checkpointing import config_fingerprint

    return config_fingerprint(normalized_model_config(config))


def class_conditional(config: Any) -> bool:
    """Whether the model takes class labels (``num_class_embeds`` or ``class_embed_type`` set)."""
    model = config.model
    return model.get("num_class_embeds") is not None or model.get("class_embed_type") is not None


def compute_dtype(config: Any) -> Any:
    return jnp.bfloat16 if config.train.mixed_precision == "bf16" else jnp.float32


def validate_config(config: Any) -> None:
    """Raise ``UserError`` for the first invalid key of a run config (see the module docstring)."""
    for section in SECTIONS:
        if section not in config or not isinstance(config[section], Mapping | ml_collections.ConfigDict):
            raise UserError(f"config has no {section!r} section; every config needs {', '.join(SECTIONS)}")
    unknown = sorted(set(config.keys()) - {"seed", *SECTIONS})
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}; allowed: seed, {', '.join(SECTIONS)}")
    for section, allowed in _SECTION_KEYS.items():
        unknown = sorted(set(config[section].keys()) - set(allowed))
        if unknown:
            raise UserError(f"unknown config key '{section}.{unknown[0]}'; allowed: {', '.join(allowed)}")
    _check(_is_int(config.get("seed")), "seed", config.get("seed"), "use an integer")

    from jaxdiff.data import parse_data_config

    data = parse_data_config(config.data)
    model = normalized_model_config(config)

    # -- model vs data ------------------------------------------------------------------------------------
    _check(
        model["in_channels"] == data.channels,
        "model.in_channels",
        model["in_channels"],
        f"it must equal data.channels={data.channels}",
    )
    d = config.diffusion
    learned = str(d.get("variance_type", "")).startswith("learned")
    out = data.channels * (2 if learned else 1)
    _check(
        model["out_channels"] == out,
        "model.out_channels",
        model["out_channels"],
        f"it must be {out} (data.channels{' x 2 for a learned variance' if learned else ''})",
    )
    size = model.get("sample_size")
    square = (data.image_size, data.image_size)
    _check(
        size is None or size == data.image_size or (isinstance(size, tuple | list) and tuple(size) == square),
        "model.sample_size",
        size,
        f"it must equal data.image_size={data.image_size} (or be unset)",
    )
    if model["_class_name"] == "UNet2DModel":
        levels = len(model["block_out_channels"]) - 1
        _check(
            data.image_size % (2**levels) == 0,
            "data.image_size",
            data.image_size,
            f"the UNet halves it {levels} times, so it must be a multiple of {2**levels}",
        )
        groups = model["norm_num_groups"]
        bad = [c for c in model["block_out_channels"] if c % groups]
        _check(
            not bad,
            "model.norm_num_groups",
            groups,
            f"it must divide every entry of model.block_out_channels {tuple(model['block_out_channels'])}",
        )

    # -- diffusion ----------------------------------------------------------------------------------------
    from jaxdiff.training.step import OBJECTIVES

    objective = d.get("objective", "ddpm")
    _check(objective in OBJECTIVES, "diffusion.objective", objective, f"use one of {', '.join(OBJECTIVES)}")
    T = d.get("num_train_timesteps")
    _check(_is_int(T) and T >= 1, "diffusion.num_train_timesteps", T, "use a positive integer")
    if objective == "ddpm":
        pt = d.get("prediction_type", "epsilon")
        _check(
            pt in PREDICTION_TYPES,
            "diffusion.prediction_type",
            pt,
            f"use one of {', '.join(PREDICTION_TYPES)}",
        )
        from jaxdiff.schedules import schedule_from_config

        schedule_from_config(d)  # raises UserError on a bad beta schedule
        _check(
            _is_number(d.get("snr_gamma", 5.0)) and d.get("snr_gamma", 5.0) > 0,
            "diffusion.snr_gamma",
            d.get("snr_gamma"),
            "use a positive number",
        )

    # -- train --------------------------------------------------------------------------------------------
    t = config.train
    for key in ("batch_size", "num_steps", "log_every", "keep_checkpoints", "fsdp"):
        _check(_is_int(t.get(key)) and t.get(key) >= 1, f"train.{key}", t.get(key), "use a positive integer")
    for key in ("warmup_steps", "sample_every", "checkpoint_every", "ema_update_after_step"):
        _check(_is_int(t.get(key)) and t.get(key) >= 0, f"train.{key}", t.get(key), "use an integer >= 0")
    microbatch_size = t.get("microbatch_size", 0)  # (absent from configs saved before it existed)
    _check(
        _is_int(microbatch_size) and microbatch_size >= 0,
        "train.microbatch_size",
        microbatch_size,
        "use 0 (automatic) or a positive integer that divides the per-device batch",
    )
    _check(
        _is_number(t.learning_rate) and t.learning_rate > 0,
        "train.learning_rate",
        t.learning_rate,
        "use a number > 0",
    )
    for key in ("weight_decay", "grad_clip", "adam_eps"):
        _check(_is_number(t.get(key)) and t.get(key) >= 0, f"train.{key}", t.get(key), "use a number >= 0")
    for key in ("adam_b1", "adam_b2", "ema_decay", "ema_min_decay"):
        _check(
            _is_number(t.get(key)) and 0 <= t.get(key) <= 1,
            f"train.{key}",
            t.get(key),
            "use a number in [0, 1]",
        )
    for key in ("ema_inv_gamma", "ema_power"):
        _check(_is_number(t.get(key)) and t.get(key) > 0, f"train.{key}", t.get(key), "use a number > 0")
    _check(
        t.mixed_precision in MIXED_PRECISION,
        "train.mixed_precision",
        t.mixed_precision,
        f"use one of {', '.join(MIXED_PRECISION)}",
    )
    from jaxdiff.training.optimizer import make_lr_schedule

    make_lr_schedule(
        t.learning_rate, lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, num_steps=t.num_steps
    )

    # -- sample -------------------------------------------------------------------------------------------
    s = config.sample
    validate_sampling(s.sampler, s.num_inference_steps, T, objective=objective, key_prefix="sample.")
    for key in ("num_samples", "batch_size"):
        _check(_is_int(s.get(key)) and s.get(key) >= 1, f"sample.{key}", s.get(key), "use a positive integer")
    _check(_is_number(s.eta) and s.eta >= 0, "sample.eta", s.eta, "use a number >= 0")
    _check(_is_int(s.seed), "sample.seed", s.seed, "use an integer")
    sample_microbatch = s.get("microbatch_size", 0)
    _check(
        _is_int(sample_microbatch) and sample_microbatch >= 0,
        "sample.microbatch_size",
        sample_microbatch,
        "use 0 (automatic) or a positive integer that divides the per-device sample batch",
    )

    # -- what only the loss and the samplers read: build them now, before a run writes anything --------------
    if objective == "ddpm":
        from jaxdiff import samplers
        from jaxdiff.training.sampling import scheduler_config
        from jaxdiff.training.step import make_loss_fn

        make_loss_fn(config)  # loss_weighting
        # The grids' sampler, and the DDPMScheduler of the diffusers export (variance_type, spacing, ...).
        for name in dict.fromkeys((s.sampler, "ddpm")):
            samplers.from_diffusers_config(scheduler_config(d, name), s.num_inference_steps)


def validate_sampling(
    sampler: Any, steps: Any, num_train_timesteps: int, *, objective: str = "ddpm", key_prefix: str = "--"
) -> None:
    """A known sampler name and ``1 <= steps <= num_train_timesteps`` (``--sampler`` / ``--steps``)."""
    if objective == "ddpm":
        _check(
            sampler in SAMPLER_NAMES,
            f"{key_prefix}sampler",
            sampler,
            f"use one of {', '.join(SAMPLER_NAMES)}",
        )
    _check(
        _is_int(steps) and 1 <= steps <= num_train_timesteps,
        f"{key_prefix}{'num_inference_steps' if key_prefix.endswith('.') else 'steps'}",
        steps,
        f"use an integer from 1 to num_train_timesteps={num_train_timesteps}",
    )


def config_to_json(config: Any) -> str:
    """The whole config as indented JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=False, default=str)


def load_config_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A config written by :func:`config_to_json` (the copy in a workdir), as a ``ConfigDict``."""
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the run config {os.fspath(path)!r}: {e}") from None
