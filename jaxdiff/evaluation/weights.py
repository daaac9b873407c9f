"""The FID Inception weights: find, (optionally) download, convert once to safetensors, load into NNX.

The weight file people already have is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the TensorFlow 2015-12-05 graph's
variables in torchvision's Inception-v3 naming). It is read without torch (``torch_pickle``), checked
key by key and shape by shape, and written once as safetensors into the cache directory
(``$JAXDIFF_CACHE`` or ``~/.cache/jaxdiff``), named by the hash of the source file.

Without an explicit path the cache, then PyTorch's hub checkpoint folder (where pytorch-fid and
torch-fidelity keep their download) are searched; the network is used only when the caller allows it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping

import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxdiff.errors import UserError
from jaxdiff.evaluation.inception import FIDInceptionV3
from jaxdiff.evaluation.torch_pickle import read_state_dict

__all__ = [
    "OFFICIAL_FILE_NAMES",
    "OFFICIAL_SHA256_PREFIX",
    "WEIGHTS_URL",
    "cache_dir",
    "convert_to_safetensors",
    "load_inception",
    "load_state",
    "resolve_weights",
]

OFFICIAL_FILE_NAMES = (
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity
)
OFFICIAL_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries its sha256 prefix
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + OFFICIAL_FILE_NAMES[0]
)
_CONVERTED_OFFICIAL = f"fid-inception-v3-{OFFICIAL_SHA256_PREFIX}.safetensors"


def cache_dir() -> str:
    """``$JAXDIFF_CACHE`` or ``~/.cache/jaxdiff``: converted weights and other derived files."""
    return os.environ.get("JAXDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff")


def _torch_hub_checkpoints() -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor the FID Inception needs, in PyTorch naming and layout (conv OIHW, linear [out, in])."""
    abstract = nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)))
    shapes = {}
    for path, value in nnx.to_flat_state(nnx.state(abstract, (nnx.Param, nnx.BatchStat))):
        *module, leaf = (str(p) for p in path)
        prefix = ".".join(module)
        if module[-1] == "conv":  # kernel HWIO -> weight OIHW
            h, w, i, o = value.value.shape
            shapes[f"{prefix}.weight"] = (o, i, h, w)
        elif module[-1] == "fc":
            shape = value.value.shape
            shapes[f"{prefix}.{'weight' if leaf == 'kernel' else 'bias'}"] = shape[::-1]
        else:  # BatchNorm
            torch_name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[
                leaf
            ]
            shapes[f"{prefix}.{torch_name}"] = value.value.shape
    return shapes


def check_state(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The tensors of ``state`` the network uses, as float32; ``UserError`` for a missing, misshapen or
    foreign tensor (BatchNorm's ``num_batches_tracked`` counters are ignored)."""
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(k for k in set(state) - set(expected) if not k.endswith("num_batches_tracked"))
    if missing or unknown:
        what = f"lacks {len(missing)} of its {len(expected)} tensors (e.g. {missing[0]})" if missing else ""
        what += (" and " if what else "") + (
            f"has {len(unknown)} foreign ones (e.g. {unknown[0]})" if unknown else ""
        )
        raise UserError(
            f"{source} is not the FID Inception-v3 weight file: it {what}; expected pytorch-fid's "
            f"{OFFICIAL_FILE_NAMES[0]} or torch-fidelity's {OFFICIAL_FILE_NAMES[1]}"
        )
    tensors = {}
    for name, shape in expected.items():
        value = np.asarray(state[name])
        if value.shape != shape:
            raise UserError(
                f"{source}: tensor {name} has shape {value.shape}, the FID Inception needs {shape}"
            )
        tensors[name] = value.astype(np.float32)
    return tensors


def convert_to_safetensors(pth_path: str, out_path: str) -> str:
    """Read a ``.pth`` state dict (no torch, no arbitrary unpickling), check it, write ``out_path``."""
    tensors = check_state(read_state_dict(pth_path), pth_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # Write then rename: a crash mid-write must not leave a partial file that later runs would trust.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out_path)), suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"source": os.path.basename(pth_path)})
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


def _download(destination: str) -> str:
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(destination), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(WEIGHTS_URL, timeout=60) as response:
            shutil.copyfileobj(response, out)
        if not _sha256(tmp).startswith(OFFICIAL_SHA256_PREFIX):
            raise UserError(
                f"the download from {WEIGHTS_URL} does not have sha256 {OFFICIAL_SHA256_PREFIX}..."
            )
        os.replace(tmp, destination)
    except OSError as error:
        raise UserError(f"could not download the FID Inception weights from {WEIGHTS_URL}: {error}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return destination


def resolve_weights(weights_path: str | os.PathLike | None = None, *, allow_download: bool = False) -> str:
    """The path of a checked safetensors file of the FID Inception weights (converting a ``.pth`` once).

    ``weights_path``: a ``.pth`` (pytorch-fid / torch-fidelity) or an already converted ``.safetensors``.
    ``None``: the cache, then torch hub's checkpoint folder, then (only if ``allow_download``) the network.
    """
    if weights_path is not None:
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise UserError(f"FID Inception weight file {path} does not exist")
        if path.endswith(".safetensors"):
            return path
        converted = os.path.join(cache_dir(), f"fid-inception-v3-{_sha256(path)[:16]}.safetensors")
        return converted if os.path.isfile(converted) else convert_to_safetensors(path, converted)
    converted = os.path.join(cache_dir(), _CONVERTED_OFFICIAL)
    if os.path.isfile(converted):
        return converted
    for folder in (cache_dir(), _torch_hub_checkpoints()):
        for name in OFFICIAL_FILE_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return convert_to_safetensors(os.path.join(folder, name), converted)
    if not allow_download:
        raise UserError(
            f"no FID Inception weights: put {OFFICIAL_FILE_NAMES[0]} (pytorch-fid) or "
            f"{OFFICIAL_FILE_NAMES[1]} (torch-fidelity) into {cache_dir()}, pass its path "
            "(weights_path= / --inception_weights), or allow the download (allow_download / --allow_download)"
        )
    return convert_to_safetensors(_download(os.path.join(cache_dir(), OFFICIAL_FILE_NAMES[0])), converted)


def load_state(path: str) -> dict[str, np.ndarray]:
    """A converted safetensors file's tensors, checked (``UserError`` if truncated or foreign)."""
    try:
        state = load_file(path)
    except Exception as error:  # safetensors raises its own error types for a damaged header or body
        raise UserError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error})"
        ) from None
    return check_state(state, path)


def load_inception(state: Mapping[str, np.ndarray]) -> FIDInceptionV3:
    """A ``FIDInceptionV3`` holding the PyTorch-named tensors of ``state`` (see ``check_state``)."""
    tensors = check_state(state, "the given state dict")
    model = FIDInceptionV3(rngs=nnx.Rngs(0))
    for name, value in tensors.items():
        *module_path, leaf = name.split(".")
        module = model
        for part in module_path:
            module = getattr(module, part)
        if leaf == "weight" and value.ndim == 4:
            module.kernel.value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif leaf == "weight" and value.ndim == 2:
            module.kernel.value = value.T
        elif leaf == "weight":
            module.scale.value = value
        elif leaf == "bias":
            module.bias.value = value
        elif leaf == "running_mean":
            module.mean.value = value
        else:
            module.var.value = value
    return model
