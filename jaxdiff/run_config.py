"""The run config: typed, validated sections, and the default every ``configs/*.py`` extends.

A run config is an ``ml_collections.ConfigDict`` with ``seed`` and five sections (``configs/``, the
``--config.SECTION.KEY=VALUE`` flags, a workdir's ``config.json``). :func:`parse_run_config` turns it into
a frozen :class:`RunConfig` of typed sections, checking every key without building a model, a loss or a
sampler, and deriving what can be derived:

- ``data``: ``jaxdiff.data.DataOptions``; ``model``: the diffusers ``UNet2DModel`` (or ``BasicUNet``) config
  filled with its defaults (``jaxdiff.models.normalize_config``);
- ``diffusion``: :class:`DiffusionOptions` (the objective, ``jaxdiff.objectives``, and the ``DDPMScheduler``
  keys it trains for); ``train``: :class:`TrainOptions`; ``sample``: :class:`SampleOptions`.

A bad key raises ``UserError`` with one line naming it, its value and what is allowed. The model's shape
follows the data: :func:`default_config` ties ``model.sample_size`` to ``data.image_size`` and
``model.in_channels`` / ``model.out_channels`` to ``data.channels`` (ml_collections ``FieldReference``s),
so a config or a flag sets them once. A warm-up at least as long as the run is shortened to the run
(``train.warmup_steps = num_steps - 1``, one logged line) rather than refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from jaxdiff import models, objectives, samplers
from jaxdiff.checkpointing import config_fingerprint
from jaxdiff.data import DataOptions, parse_data_config
from jaxdiff.data import options as data_options
from jaxdiff.errors import UserError

__all__ = [
    "DIFFUSION_KEYS",
    "EVAL_METRICS",
    "LR_SCHEDULES",
    "MIXED_PRECISION",
    "SAMPLE_KEYS",
    "SECTIONS",
    "TRAIN_KEYS",
    "DiffusionOptions",
    "RunConfig",
    "SampleOptions",
    "TrainOptions",
    "check_sampler_name",
    "config_to_json",
    "default_config",
    "load_config_json",
    "parse_run_config",
    "validate_config",
    "validate_sampling",
]

logger = logging.getLogger(__name__)

SECTIONS = ("data", "model", "diffusion", "train", "sample")
LR_SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "bf16")
# train.eval_metric: the offline digit-classifier space, or Inception-v3 against train.eval_ref_stats.
EVAL_METRICS = ("digits", "inception")


# -- typed sections ------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is not allowed; {allowed}")


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "use an integer"),
    "float": (_is_number, "use a number"),
    "bool": (lambda v: isinstance(v, bool), "use True or False"),
    "str": (lambda v: isinstance(v, str), "use a string"),
    "any": (lambda v: True, ""),
}


def _field(default: Any, kind: str, check: Callable[[Any], bool] | None = None, allowed: str = "") -> Any:
    """A section field: its default, its kind (``_KINDS``; ``any`` also allows None) and a range check."""
    return dataclasses.field(default=default, metadata={"kind": kind, "check": check, "allowed": allowed})


def _positive(default: int) -> Any:
    return _field(default, "int", lambda v: v >= 1, "use a positive integer")


def _non_negative(default: int) -> Any:
    return _field(default, "int", lambda v: v >= 0, "use an integer >= 0")


def _fraction(default: float) -> Any:
    return _field(default, "float", lambda v: 0 <= v <= 1, "use a number in [0, 1]")


def _parse_section(cls: type, section: Mapping[str, Any], name: str) -> Any:
    """``cls`` (a frozen dataclass of ``_field``s) from a config section: unknown keys refused, missing keys
    defaulted (a workdir's config from an older jaxdiff), each value's kind and range checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise UserError(f"unknown config key '{name}.{unknown[0]}'; allowed: {', '.join(fields)}")
    values = {}
    for key, f in fields.items():
        value = section[key] if key in section else f.default
        if isinstance(value, list):
            value = tuple(value)
        kind, check = f.metadata["kind"], f.metadata["check"]
        if kind != "any" or value is not None:
            ok, allowed = _KINDS[kind]
            _check(
                ok(value) and (check is None or check(value)),
                f"{name}.{key}",
                value,
                f.metadata["allowed"] or allowed,
            )
        values[key] = float(value) if kind == "float" else value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
    """The ``diffusion`` section: the objective (``jaxdiff.objectives``) and the scheduler config it trains
    for (diffusers' names and meanings). Each objective reads its own keys:

    - ``ddpm``: the ``DDPMScheduler`` keys, ``prediction_type``, ``loss_weighting`` (``none`` |
      ``min_snr``) and ``snr_gamma``;
    - ``edm``: ``sigma_min``, ``sigma_max``, ``sigma_data``, ``rho`` (``EDMEulerScheduler``'s), ``p_mean``,
      ``p_std`` (the log-normal training noise levels), ``prediction_type`` (``epsilon``: EDM's ``F``),
      and ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` for EDM's stochastic sampler;
    - ``flow``: ``num_train_timesteps`` and ``shift`` (``FlowMatchEulerDiscreteScheduler``'s),
      ``time_sampling`` (``uniform`` | ``logit_normal``), ``logit_mean``, ``logit_std``.
    """

    objective: str = _field("ddpm", "str")
    num_train_timesteps: int = _positive(1000)
    beta_schedule: str = _field("linear", "str")
    beta_start: float = _field(0.0001, "float")
    beta_end: float = _field(0.02, "float")
    trained_betas: Any = _field(None, "any")
    rescale_betas_zero_snr: bool = _field(False, "bool")
    prediction_type: str = _field("epsilon", "str")
    variance_type: str = _field("fixed_small", "str")
    clip_sample: bool = _field(True, "bool")
    clip_sample_range: float = _field(1.0, "float")
    thresholding: bool = _field(False, "bool")
    dynamic_thresholding_ratio: float = _field(0.995, "float")
    sample_max_value: float = _field(1.0, "float")
    timestep_spacing: str = _field("leading", "str")
    steps_offset: int = _non_negative(0)
    loss_weighting: str = _field("none", "str")
    snr_gamma: float = _field(5.0, "float")
    sigma_min: float = _field(0.002, "float")
    sigma_max: float = _field(80.0, "float")
    sigma_data: float = _field(0.5, "float")
    rho: float = _field(7.0, "float")
    p_mean: float = _field(-1.2, "float")
    p_std: float = _field(1.2, "float")
    s_churn: float = _field(0.0, "float")
    s_tmin: float = _field(0.0, "float")
    s_tmax: float = _field(float("inf"), "float")
    s_noise: float = _field(1.0, "float")
    time_sampling: str = _field("logit_normal", "str")
    logit_mean: float = _field(0.0, "float")
    logit_std: float = _field(1.0, "float")
    shift: float = _field(1.0, "float")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The ``train`` section (``configs/default.py`` documents each key)."""

    batch_size: int = _positive(64)
    num_steps: int = _positive(10_000)
    learning_rate: float = _field(1e-4, "float", lambda v: v > 0, "use a number > 0")
    lr_schedule: str = _field(
        "cosine", "str", lambda v: v in LR_SCHEDULES, f"use one of {', '.join(LR_SCHEDULES)}"
    )
    warmup_steps: int = _non_negative(500)
    weight_decay: float = _field(1e-6, "float", lambda v: v >= 0, "use a number >= 0")
    adam_b1: float = _fraction(0.95)
    adam_b2: float = _fraction(0.999)
    adam_eps: float = _field(1e-8, "float", lambda v: v >= 0, "use a number >= 0")
    grad_clip: float = _field(1.0, "float", lambda v: v >= 0, "use a number >= 0")
    ema_decay: float = _fraction(0.9999)
    ema_min_decay: float = _fraction(0.0)
    ema_use_warmup: bool = _field(True, "bool")
    ema_inv_gamma: float = _field(1.0, "float", lambda v: v > 0, "use a number > 0")
    ema_power: float = _field(0.75, "float", lambda v: v > 0, "use a number > 0")
    ema_update_after_step: int = _non_negative(0)
    mixed_precision: str = _field(
        "no", "str", lambda v: v in MIXED_PRECISION, f"use one of {', '.join(MIXED_PRECISION)}"
    )
    log_every: int = _positive(50)
    sample_every: int = _non_negative(1000)
    checkpoint_every: int = _non_negative(1000)
    keep_checkpoints: int = _positive(3)
    checkpoint_dir: str = _field("", "str")
    async_checkpointing: bool = _field(True, "bool")
    fsdp: int = _positive(1)
    microbatch_size: int = _field(
        0,
        "int",
        lambda v: v >= 0,
        "use 0 (automatic) or a positive integer that divides the per-device batch",
    )
    eval_every: int = _non_negative(0)
    eval_num_samples: int = _positive(1000)
    eval_metric: str = _field(
        "digits", "str", lambda v: v in EVAL_METRICS, f"use one of {', '.join(EVAL_METRICS)}"
    )
    eval_ref_stats: str = _field("", "str")
    wandb_project: str = _field("", "str")
    cond_drop_prob: float = _field(0.0, "float", lambda v: 0 <= v < 1, "use a number in [0, 1)")
    init_from: str = _field("", "str")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """The ``sample`` section: the periodic grids during training and ``sample.py``'s defaults."""

    sampler: str = _field("ddim", "str")
    num_inference_steps: int = _field(50, "int")
    num_samples: int = _positive(64)
    eta: float = _field(0.0, "float", lambda v: v >= 0, "use a number >= 0")
    seed: int = _field(0, "int")
    batch_size: int = _positive(64)
    microbatch_size: int = _field(
        0,
        "int",
        lambda v: v >= 0,
        "use 0 (automatic) or a positive integer that divides the per-device sample batch",
    )
    # Classifier-free guidance of a model trained with a null class (jaxdiff.guidance): 1 is off.
    guidance_scale: float = _field(1.0, "float", lambda v: v >= 0, "use a number >= 0 (1 = no guidance)")
    guidance_rescale: float = _field(
        0.0, "float", lambda v: 0 <= v <= 1, "use a number in [0, 1] (Lin et al. 2023's phi; 0 = off)"
    )


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainOptions))
DIFFUSION_KEYS = tuple(f.name for f in dataclasses.fields(DiffusionOptions))
SAMPLE_KEYS = tuple(f.name for f in dataclasses.fields(SampleOptions))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated run config (see the module docstring). ``source`` is the ``ConfigDict`` it came from."""

    seed: int
    data: DataOptions
    model: Mapping[str, Any]
    diffusion: DiffusionOptions
    train: TrainOptions
    sample: SampleOptions
    source: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def objective(self) -> objectives.Objective:
        return objectives.get_objective(self.diffusion.objective)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the training images and the samples."""
        return (self.data.image_size, self.data.image_size, self.data.channels)

    @property
    def num_classes(self) -> int | None:
        """Class count of a class-conditional model: ``data.num_classes`` (K real classes) when set, else
        ``model.num_class_embeds`` (a config from before ``data.num_classes``), else None."""
        if self.data.num_classes is not None:
            return self.data.num_classes
        return self.model.get("num_class_embeds") if self.class_conditional else None

    @property
    def null_label(self) -> int | None:
        """The class id meaning "no class" (label dropout in training, the unconditional half of
        classifier-free guidance): K = ``data.num_classes``, the model's extra embedding; None when the
        run has no ``data.num_classes``."""
        return self.data.num_classes

    @property
    def class_conditional(self) -> bool:
        return (
            self.model.get("num_class_embeds") is not None or self.model.get("class_embed_type") is not None
        )

    @property
    def compute_dtype(self) -> Any:
        return jnp.bfloat16 if self.train.mixed_precision == "bf16" else jnp.float32

    @property
    def model_fingerprint(self) -> str:
        """Hash of the normalized model config: equal exactly when two runs build the same parameter tree."""
        return config_fingerprint(self.model)


# -- parsing and validation ----------------------------------------------------------------------------------


def _as_mapping(section: Any) -> Mapping[str, Any]:
    return section.to_dict() if hasattr(section, "to_dict") else section


def _check_model_matches_data(
    model: Mapping[str, Any], data: DataOptions, diffusion: DiffusionOptions
) -> None:
    _check(
        model["in_channels"] == data.channels,
        "model.in_channels",
        model["in_channels"],
        f"it must equal data.channels={data.channels}",
    )
    learned = str(diffusion.variance_type).startswith("learned")
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


def check_sampler_name(name: Any, key: str = "--sampler") -> str:
    """The canonical name of a registered sampler (a short name, an alias or a diffusers class name), or a
    ``UserError`` naming ``key``."""
    try:
        return samplers.resolve_sampler(name).name
    except UserError:
        names = ", ".join(samplers.sampler_names())
        raise UserError(f"{key}={name!r} is not allowed; use one of {names} (or an alias)") from None


def validate_sampling(
    sampler: Any,
    steps: Any,
    num_train_timesteps: int,
    *,
    objective: str = "ddpm",
    key_prefix: str = "--",
) -> str:
    """A known sampler name (or alias) for ``objective`` and ``1 <= steps <= num_train_timesteps``
    (``--sampler`` / ``--steps``, or the ``sample`` section with ``key_prefix="sample."``). Returns the
    sampler's canonical name (the name itself where the objective takes no scheduler)."""
    sampler = objectives.get_objective(objective).resolve_sampler(sampler, key=f"{key_prefix}sampler")
    _check(
        _is_int(steps) and 1 <= steps <= num_train_timesteps,
        f"{key_prefix}{'num_inference_steps' if key_prefix.endswith('.') else 'steps'}",
        steps,
        f"use an integer from 1 to num_train_timesteps={num_train_timesteps}",
    )
    return sampler


def _derive_warmup(train: TrainOptions, log: Callable[[str], None]) -> TrainOptions:
    """A warm-up at least as long as the run (a quick ``num_steps=20`` smoke run of a long recipe) becomes
    ``num_steps - 1`` steps: the learning rate then reaches its peak on the last update."""
    if train.lr_schedule == "constant" or train.warmup_steps < train.num_steps:
        return train
    derived = train.num_steps - 1
    log(
        f"train.warmup_steps={train.warmup_steps} is not below train.num_steps={train.num_steps}: "
        f"warming up over {derived} steps instead"
    )
    return dataclasses.replace(train, warmup_steps=derived)


def _derive_eval(train: TrainOptions, data: DataOptions, log: Callable[[str], None]) -> TrainOptions:
    """The digits metric scores the 16x16 grayscale digits only: on other data (a digits-based config
    pointed at a folder, say) its evaluation is off, with one logged line."""
    digits = (data.source.partition(":")[0], data.image_size, data.channels) == ("digits", 16, 1)
    if not train.eval_every or train.eval_metric != "digits" or digits:
        return train
    log(
        f"train.eval_metric='digits' scores 16x16 grayscale digits, not data.source={data.source!r} at "
        f"{data.image_size}x{data.image_size}x{data.channels}: no evaluation during training "
        "(train.eval_metric='inception' with train.eval_ref_stats measures any data)"
    )
    return dataclasses.replace(train, eval_every=0)


def _derive_class_embeds(model_section: Any, data: DataOptions) -> Any:
    """The model section with ``num_class_embeds = data.num_classes + 1`` (K classes and the null label K)
    when ``data.num_classes`` is set; a ``model.num_class_embeds`` or ``model.class_embed_type`` that
    contradicts it is a ``UserError``."""
    if data.num_classes is None:
        return model_section
    model = dict(_as_mapping(model_section))
    embeds, want = model.get("num_class_embeds"), data.num_classes + 1
    _check(
        embeds is None or embeds == want,
        "model.num_class_embeds",
        embeds,
        f"with data.num_classes={data.num_classes} it must be {want} (the classes and a null label) or unset",
    )
    _check(
        model.get("class_embed_type") is None,
        "model.class_embed_type",
        model.get("class_embed_type"),
        "leave it unset with data.num_classes (a learned embedding of the classes and a null label)",
    )
    _check(
        model.get("_class_name", "UNet2DModel") == "UNet2DModel",
        "model._class_name",
        model.get("_class_name"),
        "data.num_classes needs a UNet2DModel (its class embedding)",
    )
    model["num_class_embeds"] = want
    return model


def parse_run_config(config: Any, *, log: Callable[[str], None] | None = None) -> RunConfig:
    """Validate a run config (``ConfigDict`` or mapping) into a :class:`RunConfig` (module docstring).

    ``log`` receives the one-line notes on derived values (default: this module's logger).
    """
    if isinstance(config, RunConfig):
        return config
    for section in SECTIONS:
        if section not in config or not isinstance(config[section], Mapping | ml_collections.ConfigDict):
            raise UserError(f"config has no {section!r} section; every config needs {', '.join(SECTIONS)}")
    unknown = sorted(set(config.keys()) - {"seed", *SECTIONS})
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}; allowed: seed, {', '.join(SECTIONS)}")
    seed = config.get("seed")
    _check(_is_int(seed), "seed", seed, "use an integer")

    diffusion = _parse_section(DiffusionOptions, _as_mapping(config["diffusion"]), "diffusion")
    train = _parse_section(TrainOptions, _as_mapping(config["train"]), "train")
    sample = _parse_section(SampleOptions, _as_mapping(config["sample"]), "sample")
    data = parse_data_config(config["data"])
    model = models.normalize_config(_derive_class_embeds(config["model"], data))
    _check_model_matches_data(model, data, diffusion)
    _check(
        train.cond_drop_prob == 0 or data.num_classes is not None,
        "train.cond_drop_prob",
        train.cond_drop_prob,
        "label dropout needs a null label: set data.num_classes (or use 0)",
    )

    objective = objectives.get_objective(diffusion.objective)
    diffusion_dict = diffusion.to_dict()
    objective.validate(diffusion_dict)
    canonical = validate_sampling(
        sample.sampler,
        sample.num_inference_steps,
        diffusion.num_train_timesteps,
        objective=diffusion.objective,
        key_prefix="sample.",
    )
    sample = dataclasses.replace(sample, sampler=canonical)
    if objective.uses_schedulers:
        # The grids' sampler and the exported scheduler accept these options (spacing, variance...).
        objective.make_sampling(diffusion_dict, sample.sampler, sample.num_inference_steps, sample.eta)
        export = objective.export_scheduler(diffusion_dict) if objective.export_scheduler else None
        if export is not None and export["_class_name"] in samplers.SCHEDULER_CLASSES:
            samplers.from_diffusers_config(export, sample.num_inference_steps)
    _check(
        train.eval_metric != "inception" or not train.eval_every or bool(train.eval_ref_stats),
        "train.eval_ref_stats",
        train.eval_ref_stats,
        "train.eval_metric='inception' needs reference statistics (an .npz: evaluate.py --ref_source)",
    )
    log = log or logger.warning
    train = _derive_warmup(train, log)
    train = _derive_eval(train, data, log)
    run = RunConfig(
        seed=seed, data=data, model=model, diffusion=diffusion, train=train, sample=sample, source=config
    )
    _check(
        sample.guidance_scale == 1 or run.null_label is not None,
        "sample.guidance_scale",
        sample.guidance_scale,
        "classifier-free guidance needs a class-conditional model trained with a null class; use 1",
    )
    return run


def validate_config(config: Any) -> None:
    """Raise ``UserError`` for the first invalid key of a run config (see :func:`parse_run_config`)."""
    parse_run_config(config, log=lambda message: None)


# -- the default config and its JSON form --------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
    """Every section and key at its default; ``configs/default.py`` documents them, the other configs
    extend it. The model's shape keys are tied to the data section's (see the module docstring)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(data_options.DEFAULTS))
    config.data.data_dir = config_dict.placeholder(str)
    config.data.num_classes = config_dict.placeholder(int)
    config.model = model = ml_collections.ConfigDict()
    model["_class_name"] = "UNet2DModel"
    model.sample_size = config.data.get_ref("image_size")
    model.in_channels = config.data.get_ref("channels")
    model.out_channels = config.data.get_ref("channels")
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
    model.num_class_embeds = config_dict.placeholder(int)
    for name, cls in (("diffusion", DiffusionOptions), ("train", TrainOptions), ("sample", SampleOptions)):
        section = ml_collections.ConfigDict()
        for f in dataclasses.fields(cls):
            section[f.name] = f.default
        config[name] = section
    config.diffusion.trained_betas = config_dict.placeholder(tuple)
    return config


def config_to_json(config: Any) -> str:
    """The whole config as indented JSON (tuples become lists)."""
    config = config.source if isinstance(config, RunConfig) else config
    return json.dumps(config.to_dict(), indent=2, sort_keys=False, default=str)


def load_config_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """A config written by :func:`config_to_json` (the copy in a workdir), as a ``ConfigDict``."""
    try:
        with open(path, encoding="utf-8") as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the run config {os.fspath(path)!r}: {e}") from None
