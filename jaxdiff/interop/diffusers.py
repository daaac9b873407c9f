"""diffusers interop: ``UNet2DModel`` weights and ``DDPMPipeline`` / ``DDIMPipeline`` folders, both ways.

jaxdiff's UNet attribute names mirror diffusers' module names, so a parameter path maps to a
PyTorch state-dict key by joining it with dots, and each leaf converts by one rule:

============================  =====================  ===========================================
jaxdiff leaf                  diffusers key suffix   array
============================  =====================  ===========================================
``kernel`` ``[kh, kw, i, o]``  ``weight``             HWIO <-> OIHW (``transpose(3, 2, 0, 1)``)
``kernel`` ``[i, o]``          ``weight``             transposed (``nn.Linear`` stores ``[o, i]``)
``scale`` (group norm)         ``weight``             as is
``bias``, ``weight``           same                   as is
============================  =====================  ===========================================

Files are read with ``safetensors.numpy`` (no torch needed); ``.bin`` checkpoints need torch,
which is imported only then, and are read with ``torch.load(weights_only=True)``: a pickle holding
anything but tensors is refused unread, never run. Folders written here load with
``UNet2DModel.from_pretrained`` and ``DDPMPipeline.from_pretrained`` / ``DDIMPipeline.from_pretrained``.

Damaged or hostile files are ``UserError``s naming the file: a truncated or foreign safetensors file, a
``.bin`` that is not a state dict of tensors, weights of a non-floating dtype or the wrong shape (naming the
key), and a sharded index (``*.safetensors.index.json``) naming a file outside the model folder (``../``,
an absolute path, or a symlink leading out; Hugging Face's cache layout, ``snapshots/<rev>/`` linking into
the same repository's ``blobs/``, is inside). Saving writes real files below the target folder and refuses
symlinks there (``jaxdiff.workdir``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.flax import load_file as load_safetensors_flax
from safetensors.numpy import load_file as load_safetensors_numpy
from safetensors.numpy import save as safetensors_bytes

from jaxdiff.errors import UserError
from jaxdiff.models import ApplyFn, create_model, functional
from jaxdiff.models.config import UNET2D_CLASS_NAME, class_name, to_dict, to_json_dict, unet2d_config
from jaxdiff.models.layers import Dtype
from jaxdiff.workdir import makedirs_in_workdir, write_bytes_atomic, write_text_atomic

DIFFUSERS_VERSION = "0.42.1"  # the version whose UNet2DModel jaxdiff mirrors; written into saved configs
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
BIN_NAME = "diffusion_pytorch_model.bin"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"
# jaxdiff's own facts about an exported pipeline that diffusers has no key for (the null label of a
# classifier-free-guidance model): a file diffusers does not read, beside model_index.json.
JAXDIFF_METADATA_NAME = "jaxdiff.json"

Path = str | os.PathLike
Params = nnx.State | Mapping[str, Any]

# Attention weights of pre-0.13 diffusers checkpoints (e.g. google/ddpm-*), renamed on load as
# diffusers itself does.
_DEPRECATED_ATTENTION = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_DEPRECATED_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ----------------------------------------------------------------------------------------------
# Pure converters: jaxdiff params <-> flat torch-layout state dict of numpy arrays.
# ----------------------------------------------------------------------------------------------


def torch_key(path: tuple[Any, ...]) -> str:
    """The diffusers state-dict key of a jaxdiff parameter path (``kernel`` / ``scale`` -> ``weight``)."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, "weight" if leaf in ("kernel", "scale") else leaf])


def to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A jaxdiff leaf array in PyTorch layout (conv HWIO -> OIHW, dense ``[i, o]`` -> ``[o, i]``)."""
    if leaf == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if leaf == "kernel" and array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(array)


def from_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """The inverse of ``to_torch_layout``."""
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def _flat_params(params: Params) -> dict[tuple[Any, ...], Any]:
    """``{path: array}`` from an ``nnx.State`` or a nested dict (e.g. ``nnx.to_pure_dict`` output)."""
    flat: dict[tuple[Any, ...], Any] = {}

    def walk(prefix: tuple[Any, ...], node: Any) -> None:
        if isinstance(node, nnx.Variable):
            flat[prefix] = node.get_value()
        elif isinstance(node, Mapping):
            for key, child in node.items():
                walk((*prefix, key), child)
        else:
            flat[prefix] = node

    walk((), params)
    return flat


def _host_array(value: Any) -> np.ndarray:
    """A numpy copy of a parameter; bfloat16 (which safetensors.numpy cannot store) becomes float32."""
    array = np.asarray(value)
    if array.dtype == jnp.bfloat16:
        array = array.astype(np.float32)
    return array


def params_to_state_dict(params: Params) -> dict[str, np.ndarray]:
    """jaxdiff params -> diffusers-style state dict (``{"conv_in.weight": OIHW array, ...}``)."""
    return {
        torch_key(path): to_torch_layout(str(path[-1]), _host_array(value))
        for path, value in _flat_params(params).items()
    }


def _rename_deprecated(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        match = _DEPRECATED_ATTENTION.match(key)
        if match:
            key = f"{match[1]}.{_DEPRECATED_NAMES[match[2]]}.{match[3]}"
        out[key] = value
    return out


def template_model(model_config: Mapping[str, Any], *, dtype: Dtype = jnp.float32) -> nnx.Module:
    """The model a config describes, initialised on the host CPU, as a template for its structure.

    Host initialisation is fast (numpy) while ``nnx.eval_shape`` re-scans the growing trace at every
    RNG draw, which takes seconds for a UNet; the template's weights are dropped by the callers.
    """
    with jax.default_device(jax.devices("cpu")[0]):
        return create_model(model_config, rngs=nnx.Rngs(0), dtype=dtype)


def _match(state_dict: Mapping[str, Any], template: nnx.Module) -> list[tuple[Any, nnx.Param, np.ndarray]]:
    """Pair every parameter of the template model with its state-dict array (jaxdiff layout),
    checking that no key is missing or left over and that every shape fits."""
    state_dict = _rename_deprecated(state_dict)
    expected = nnx.to_flat_state(nnx.state(template, nnx.Param))
    matched = []
    for path, variable in expected:
        key = torch_key(path)
        if key not in state_dict:
            raise UserError(f"weights are missing {key!r} that the config's model needs")
        array = from_torch_layout(str(path[-1]), np.asarray(state_dict[key]))
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise UserError(
                f"weight {key!r} has dtype {array.dtype}; the config's model needs floating-point weights"
            )
        if array.shape != variable.shape:
            raise UserError(
                f"weight {key!r} has shape {tuple(np.shape(state_dict[key]))}, "
                f"the config's model expects {_torch_shape(path, variable.shape)}"
            )
        matched.append((path, variable, array))
    extra = sorted(set(state_dict) - {torch_key(path) for path, _, _ in matched})
    if extra:
        raise UserError(f"weights have {len(extra)} keys the config's model does not use, e.g. {extra[0]!r}")
    return matched


def state_dict_to_params(
    state_dict: Mapping[str, Any],
    model_config: Mapping[str, Any],
    *,
    param_dtype: Dtype | None = jnp.float32,
) -> nnx.State:
    """diffusers-style state dict (numpy, PyTorch layout) -> jaxdiff params for ``model_config``.

    Every parameter of the model must be present with the right shape and no key may be left over;
    otherwise ``UserError`` names the key. Arrays are cast to ``param_dtype`` (None keeps them).
    Old attention names (``query`` / ``key`` / ``value`` / ``proj_attn``) are accepted.
    """
    return _params_like(template_model(model_config), state_dict, param_dtype)


def _params_like(template: nnx.Module, state_dict: Mapping[str, Any], param_dtype: Dtype | None) -> nnx.State:
    return nnx.from_flat_state(
        [
            (path, variable.replace(jnp.asarray(array, dtype=param_dtype)))
            for path, variable, array in _match(state_dict, template)
        ]
    )


def _torch_shape(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return to_torch_layout(str(path[-1]), np.empty(shape, np.int8)).shape


# ----------------------------------------------------------------------------------------------
# Files: diffusers model folders and pipelines.
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{os.fspath(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{os.fspath(path)!r} is not valid JSON: {e}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jnp.ndarray)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_text(data: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return load_safetensors_numpy(path)
    except SafetensorError as e:
        raise UserError(f"{path!r} is truncated or not a safetensors file ({_first_line(e)})") from None
    except (KeyError, TypeError):
        # A dtype numpy cannot hold: read through the flax backend instead, then onto the host.
        return {k: np.asarray(v) for k, v in load_safetensors_flax(path).items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", re.DOTALL)


def _load_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional (the "test" extra): only .bin files need it, and it is slow to import
    except ImportError:
        raise UserError(
            f"{path!r} is a PyTorch pickle: install torch to read it, or convert it to safetensors"
        ) from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            # weights_only: torch's restricted unpickler, which refuses (never calls) anything but tensors.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = _UNPICKLER_ERROR.search(str(e))
        detail = " ".join(match[1].split())[:200] if match else _first_line(e)
        raise UserError(
            f"{path!r} holds objects other than tensors ({detail}); it was not loaded, since that could run "
            "code: use a safetensors file or a state dict of tensors"
        ) from None
    except Exception as e:  # noqa: BLE001 - zip, EOF and storage errors of a damaged file
        raise UserError(f"{path!r} is truncated or not a PyTorch weights file ({_first_line(e)})") from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path!r} holds a {type(state).__name__}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path!r}: {key!r} holds a {type(value).__name__}, not a tensor")
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def _allowed_roots(folder: str) -> list[str]:
    """The real directories a model folder's files may lead into: the folder, and for a folder in Hugging
    Face's cache (``models--org--name/snapshots/<rev>/...``, files linked into ``blobs/``) that ``blobs``."""
    roots = [os.path.realpath(folder)]
    parts = os.path.abspath(folder).split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            roots.append(os.path.realpath(os.sep.join([*parts[:i], "blobs"])))
            break
    return roots


def _shard_files(folder: str, index_path: str) -> list[str]:
    """The shard paths a ``*.safetensors.index.json`` names, each a file inside ``folder``."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{index_path!r} has no 'weight_map' object of parameter name -> shard file name")
    roots = _allowed_roots(folder)
    paths = []
    for name in sorted(set(weight_map.values())):
        if not name or os.path.isabs(name) or os.path.basename(name) != name or name in (".", ".."):
            raise UserError(
                f"{index_path!r} names the shard {name!r}: shards must be plain file names in the model "
                "folder"
            )
        path = os.path.join(folder, name)
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in roots):
            raise UserError(
                f"{index_path!r} names the shard {name!r}, a link to {real} outside the model folder"
            )
        if not os.path.isfile(path):
            raise UserError(f"{index_path!r} names the shard {name!r}, which is not a file in {folder!r}")
        paths.append(path)
    return paths


def read_state_dict(folder: Path) -> dict[str, np.ndarray]:
    """The weights of a diffusers model folder: ``diffusion_pytorch_model.safetensors`` (or its sharded
    index), else ``diffusion_pytorch_model.bin`` (needs torch). Damaged files and an index naming files
    outside the folder raise ``UserError`` naming the file."""
    folder = os.fspath(folder)
    single = os.path.join(folder, SAFETENSORS_NAME)
    index = os.path.join(folder, SAFETENSORS_INDEX_NAME)
    pickled = os.path.join(folder, BIN_NAME)
    if os.path.isfile(single):
        return _load_safetensors(single)
    if os.path.isfile(index):
        state: dict[str, np.ndarray] = {}
        for shard in _shard_files(folder, index):
            state.update(_load_safetensors(shard))
        return state
    if os.path.isfile(pickled):
        return _load_bin(pickled)
    raise UserError(
        f"{folder!r} has no weights: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {BIN_NAME}"
    )


def read_unet_config(folder: Path) -> dict[str, Any]:
    """A folder's ``config.json``, validated and with diffusers' defaults filled in."""
    raw = _read_json(os.path.join(os.fspath(folder), CONFIG_NAME))
    if raw.get("_class_name", UNET2D_CLASS_NAME) != UNET2D_CLASS_NAME:
        raise UserError(
            f"{os.fspath(folder)!r} holds a {raw['_class_name']!r}; jaxdiff loads only {UNET2D_CLASS_NAME!r}"
        )
    return unet2d_config(raw)


def load_unet(
    path: Path, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> tuple[ApplyFn, nnx.State, dict[str, Any]]:
    """Read a diffusers ``UNet2DModel`` folder (``config.json`` + weights).

    Returns ``(apply_fn, params, config)``: ``apply_fn(params, x, t, class_labels=None, key=None)``
    as from ``jaxdiff.models.functional`` (NHWC, computing in ``dtype``), ``params`` in
    ``param_dtype``, and the validated config with all defaults filled in.
    """
    config = read_unet_config(path)
    template = template_model(config, dtype=dtype)
    params = _params_like(template, read_state_dict(path), param_dtype)
    apply_fn, _ = functional(template)
    return apply_fn, params, config


def _diffusers_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    if class_name(config) != UNET2D_CLASS_NAME:
        raise UserError(
            f"only {UNET2D_CLASS_NAME} models can be saved for diffusers, "
            f"not _class_name={to_dict(config)['_class_name']!r}"
        )
    cfg = unet2d_config(config)
    return {"_class_name": UNET2D_CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION, **to_json_dict(cfg)}


def save_unet(path: Path, params: Params, config: Mapping[str, Any]) -> None:
    """Write ``params`` as a diffusers ``UNet2DModel`` folder: ``config.json`` and
    ``diffusion_pytorch_model.safetensors`` (float32 for bfloat16 params), loadable with
    ``UNet2DModel.from_pretrained(path)``. The params must match ``config``. Each file is written whole
    (a temporary file renamed) as a real file: a symlink in its place is refused (``UserError``)."""
    json_config = _diffusers_unet_config(config)
    state_dict = params_to_state_dict(params)
    _match(
        state_dict, template_model(json_config)
    )  # same keys and shapes as the config's model, or UserError
    makedirs_in_workdir(path, "")
    write_text_atomic(path, CONFIG_NAME, _json_text(json_config))
    write_bytes_atomic(path, SAFETENSORS_NAME, safetensors_bytes(state_dict, metadata={"format": "pt"}))


def _scheduler_json(scheduler_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    sched = dict(to_dict(scheduler_config))
    name = sched.pop("_class_name", None) or "DDPMScheduler"
    if not (isinstance(name, str) and name.isidentifier() and name.endswith("Scheduler")):
        raise UserError(
            f"scheduler _class_name={name!r} is not a diffusers scheduler class name (e.g. 'DDPMScheduler')"
        )
    sched.pop("_diffusers_version", None)
    return {"_class_name": name, "_diffusers_version": DIFFUSERS_VERSION, **sched}


def save_pipeline(
    path: Path,
    params: Params,
    config: Mapping[str, Any],
    scheduler_config: Mapping[str, Any] | Any,
    pipeline_class: str | None = None,
    jaxdiff_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a diffusers pipeline folder: ``model_index.json``, ``unet/`` and ``scheduler/``, and
    ``jaxdiff_metadata`` (when given) as ``jaxdiff.json`` (:func:`read_jaxdiff_metadata`).

    The pipeline is ``pipeline_class`` if given, else ``DDIMPipeline`` when the scheduler's ``_class_name``
    is ``"DDIMScheduler"`` and ``DDPMPipeline`` otherwise (``_class_name`` defaults to
    ``"DDPMScheduler"``), so ``DDPMPipeline.from_pretrained(path)`` / ``DDIMPipeline.from_pretrained(path)``
    load it.
    """
    sched = _scheduler_json(scheduler_config)
    pipeline = pipeline_class or (
        "DDIMPipeline" if sched["_class_name"] == "DDIMScheduler" else "DDPMPipeline"
    )
    root = os.fspath(path)
    save_unet(makedirs_in_workdir(root, "unet"), params, config)  # (a symlinked unet/ is refused)
    write_text_atomic(root, f"scheduler/{SCHEDULER_CONFIG_NAME}", _json_text(sched))
    if jaxdiff_metadata:
        write_text_atomic(root, JAXDIFF_METADATA_NAME, _json_text(jaxdiff_metadata))
    write_text_atomic(
        root,
        MODEL_INDEX_NAME,
        _json_text(
            {
                "_class_name": pipeline,
                "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", sched["_class_name"]],
                "unet": ["diffusers", UNET2D_CLASS_NAME],
            }
        ),
    )


def read_jaxdiff_metadata(path: Path) -> dict[str, Any]:
    """The ``jaxdiff.json`` of a pipeline folder written by :func:`save_pipeline` (``{}`` when absent):
    ``{"num_classes": K, "null_label": K}`` for a class-conditional model trained with a null label."""
    file = os.path.join(os.fspath(path), JAXDIFF_METADATA_NAME)
    if not os.path.isfile(file):
        return {}
    data = _read_json(file)
    if not isinstance(data, dict):
        raise UserError(f"{file!r} holds a {type(data).__name__}, not a JSON object")
    return data


def load_pipeline(
    path: Path, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> tuple[ApplyFn, nnx.State, dict[str, Any], dict[str, Any]]:
    """Read a diffusers unconditional pipeline folder (``unet/`` + ``scheduler/``).

    Returns ``(apply_fn, params, unet_config, scheduler_config)``; ``scheduler_config`` is the
    ``scheduler_config.json`` dict as written (``_class_name`` included).
    """
    root = os.fspath(path)
    index = _read_json(os.path.join(root, MODEL_INDEX_NAME))
    for component in ("unet", "scheduler"):
        if component not in index:
            raise UserError(f"{os.path.join(root, MODEL_INDEX_NAME)!r} lists no {component!r} component")
    apply_fn, params, unet_config = load_unet(
        os.path.join(root, "unet"), dtype=dtype, param_dtype=param_dtype
    )
    scheduler_config = _read_json(os.path.join(root, "scheduler", SCHEDULER_CONFIG_NAME))
    return apply_fn, params, unet_config, scheduler_config
