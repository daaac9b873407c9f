"""Model configurations: diffusers' ``UNet2DModel`` keys, their defaults, and validation.

A model config is a mapping (dict or ``ml_collections.ConfigDict``). ``_class_name`` picks the
network (``"UNet2DModel"``, the default, or ``"BasicUNet"``); every other key has the meaning it has
in diffusers, so a diffusers ``config.json`` and a jaxdiff config build the same network.
Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ``_name_or_path``, ...) are metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxdiff.errors import UserError

UNET2D_CLASS_NAME = "UNet2DModel"
BASIC_UNET_CLASS_NAME = "BasicUNet"

# diffusers 0.42.1 `UNet2DModel.__init__` defaults, read once with inspect.signature (diffusers is
# not imported at run time). Sequences are tuples here and in normalised configs.
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-05,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# The course's BasicUNet has only its channel counts; sample_size is accepted as metadata.
BASIC_UNET_DEFAULTS: dict[str, Any] = {"in_channels": 1, "out_channels": 1, "sample_size": None}

# Values of the string-valued keys that jaxdiff implements (diffusers spells some of them
# case-insensitively or with a "UNetRes" prefix; see `block_kind`).
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)
TIME_EMBEDDING_TYPES = ("positional", "fourier", "learned")
RESAMPLE_TYPES = ("conv", "resnet")
ACT_FNS = ("silu", "swish", "mish", "gelu", "relu")
TIME_SCALE_SHIFTS = ("default", "scale_shift")
CLASS_EMBED_TYPES = (None, "timestep", "identity")


def to_dict(model_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A plain dict from a dict or ``ConfigDict``; lists become tuples (recursively)."""
    if hasattr(model_config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        model_config = model_config.to_dict()
    if not isinstance(model_config, Mapping):
        raise UserError(f"model config must be a mapping, got {type(model_config).__name__}")

    def freeze(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(freeze(v) for v in value)
        return value

    return {str(k): freeze(v) for k, v in model_config.items()}


def class_name(model_config: Mapping[str, Any]) -> str:
    """The network a config asks for: ``"UNet2DModel"`` (default) or ``"BasicUNet"``."""
    name = to_dict(model_config).get("_class_name") or UNET2D_CLASS_NAME
    if name not in (UNET2D_CLASS_NAME, BASIC_UNET_CLASS_NAME):
        raise UserError(
            f"model _class_name={name!r} is not supported; "
            f"allowed: {UNET2D_CLASS_NAME!r}, {BASIC_UNET_CLASS_NAME!r}"
        )
    return name


def block_kind(block_type: str) -> str:
    """diffusers accepts a "UNetRes" prefix on block type names and drops it; so do we."""
    return block_type[len("UNetRes") :] if block_type.startswith("UNetRes") else block_type


def _fill(cfg: dict[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key not in defaults:
            raise UserError(f"unknown {what} config key {key!r}; allowed keys: {', '.join(sorted(defaults))}")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"model config {key}={value!r} is not supported; allowed: {allowed}")


def _choice(cfg: Mapping[str, Any], key: str, allowed: Sequence[Any]) -> None:
    _require(cfg[key] in allowed, key, cfg[key], ", ".join(repr(a) for a in allowed))


def unet2d_config(model_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Validate a ``UNet2DModel`` config and fill in diffusers' defaults.

    Returns a dict with every key of ``UNET2D_DEFAULTS`` (sequences as tuples) plus
    ``_class_name="UNet2DModel"``. Raises ``UserError`` naming the first unknown key or
    unsupported value.
    """
    raw = to_dict(model_config)
    if class_name(raw) != UNET2D_CLASS_NAME:
        raise UserError(f"expected a {UNET2D_CLASS_NAME} config, got _class_name={raw['_class_name']!r}")
    cfg = _fill(raw, UNET2D_DEFAULTS, UNET2D_CLASS_NAME)
    if isinstance(cfg["act_fn"], str):
        cfg["act_fn"] = cfg["act_fn"].lower()  # diffusers' get_activation lower-cases the name

    for key in ("in_channels", "out_channels", "layers_per_block"):
        _require(_is_int(cfg[key]) and cfg[key] >= 1, key, cfg[key], "a positive integer")
    for key in ("center_input_sample", "flip_sin_to_cos", "add_attention"):
        _require(isinstance(cfg[key], bool), key, cfg[key], "true or false")
    boc = cfg["block_out_channels"]
    _require(
        isinstance(boc, tuple) and len(boc) >= 1 and all(_is_int(c) and c >= 1 for c in boc),
        "block_out_channels",
        boc,
        "a non-empty list of positive integers",
    )
    for key, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        types = cfg[key]
        _require(isinstance(types, tuple), key, types, f"a list of block type names from {allowed}")
        for block_type in types:
            _require(
                isinstance(block_type, str) and block_kind(block_type) in allowed,
                key,
                block_type,
                ", ".join(allowed),
            )
        if len(types) != len(boc):
            raise UserError(
                f"model config {key} has {len(types)} entries but block_out_channels={boc!r} has {len(boc)}; "
                "give one block type per channel count"
            )
    _choice(cfg, "mid_block_type", MID_BLOCK_TYPES)
    _choice(cfg, "time_embedding_type", TIME_EMBEDDING_TYPES)
    _choice(cfg, "downsample_type", RESAMPLE_TYPES)
    _choice(cfg, "upsample_type", RESAMPLE_TYPES)
    _choice(cfg, "act_fn", ACT_FNS)
    _choice(cfg, "resnet_time_scale_shift", TIME_SCALE_SHIFTS)
    _choice(cfg, "class_embed_type", CLASS_EMBED_TYPES)

    for key in ("time_embedding_dim", "num_class_embeds", "attention_head_dim", "attn_norm_num_groups"):
        value = cfg[key]
        _require(value is None or (_is_int(value) and value >= 1), key, value, "null or a positive integer")
    _require(
        _is_int(cfg["norm_num_groups"]) and cfg["norm_num_groups"] >= 1,
        "norm_num_groups",
        cfg["norm_num_groups"],
        "a positive integer (diffusers' down/up blocks need one)",
    )
    _require(
        _is_int(cfg["downsample_padding"]) and cfg["downsample_padding"] >= 0,
        "downsample_padding",
        cfg["downsample_padding"],
        "an integer >= 0",
    )
    _require(_is_number(cfg["freq_shift"]), "freq_shift", cfg["freq_shift"], "a number")
    _require(
        _is_number(cfg["mid_block_scale_factor"]) and cfg["mid_block_scale_factor"] != 0,
        "mid_block_scale_factor",
        cfg["mid_block_scale_factor"],
        "a non-zero number",
    )
    _require(
        _is_number(cfg["dropout"]) and 0.0 <= cfg["dropout"] < 1.0,
        "dropout",
        cfg["dropout"],
        "a number in [0, 1)",
    )
    _require(
        _is_number(cfg["norm_eps"]) and cfg["norm_eps"] > 0, "norm_eps", cfg["norm_eps"], "a positive number"
    )
    size = cfg["sample_size"]
    _require(
        size is None
        or (_is_int(size) and size >= 1)
        or (isinstance(size, tuple) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size)),
        "sample_size",
        size,
        "null, a positive integer or [height, width]",
    )
    steps = cfg["num_train_timesteps"]
    _require(
        steps is None or (_is_int(steps) and steps >= 1), "num_train_timesteps", steps, "null or an integer"
    )
    if cfg["time_embedding_type"] == "learned":
        _require(
            steps is not None,
            "num_train_timesteps",
            steps,
            "a positive integer (time_embedding_type='learned' needs the table size)",
        )
    cfg["_class_name"] = UNET2D_CLASS_NAME
    return cfg


def basic_unet_config(model_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Validate a ``BasicUNet`` config (``in_channels``, ``out_channels``, ``sample_size``)."""
    raw = to_dict(model_config)
    cfg = _fill(raw, BASIC_UNET_DEFAULTS, BASIC_UNET_CLASS_NAME)
    for key in ("in_channels", "out_channels"):
        _require(_is_int(cfg[key]) and cfg[key] >= 1, key, cfg[key], "a positive integer")
    cfg["_class_name"] = BASIC_UNET_CLASS_NAME
    return cfg


def normalize_config(model_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The validated, default-filled config for whichever network ``_class_name`` names."""
    if class_name(model_config) == BASIC_UNET_CLASS_NAME:
        return basic_unet_config(model_config)
    return unet2d_config(model_config)


def to_json_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a normalised config (tuples become lists), keys sorted like diffusers."""

    def thaw(value: Any) -> Any:
        if isinstance(value, tuple):
            return [thaw(v) for v in value]
        return value

    return {k: thaw(cfg[k]) for k in sorted(cfg)}
