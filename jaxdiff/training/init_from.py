"""Fine-tuning: ``train.init_from`` starts a fresh run from another model's weights.

The source is a ``train.py`` workdir (the EMA weights of its newest checkpoint,
``jaxdiff.inference.load_workdir``) or a diffusers folder: a pipeline (``model_index.json`` + ``unet/``), a
folder with a ``unet/`` sub-folder, or a ``UNet2DModel`` folder (``config.json`` + weights). The new run
trains those weights (its parameters and its EMA both start as them) with a fresh optimizer from step 0, on
its own data and with its own diffusion / schedule options; only the model must be the same.

:func:`resolve_init_from` checks the source cheaply (path, model config) before a run writes anything;
:meth:`InitSource.load_params` reads the weights. A run that resumes from its own checkpoint never reads
them: ``init_from`` only seeds a fresh run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.inference.loading import load_workdir
from jaxdiff.interop import load_unet
from jaxdiff.interop.diffusers import MODEL_INDEX_NAME, read_unet_config
from jaxdiff.run_config import RunConfig, load_config_json, parse_run_config
from jaxdiff.sharding import to_host

__all__ = ["IGNORED_MODEL_KEYS", "InitSource", "params_like", "resolve_init_from"]

# Model keys that do not change the weights: a model fine-tunes at another resolution.
IGNORED_MODEL_KEYS = ("sample_size",)


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A checked ``train.init_from`` source.

    Attributes:
      path: the folder as given (``train.init_from``).
      kind: ``"workdir"`` (a ``train.py`` run) or ``"diffusers"`` (a ``UNet2DModel`` folder).
      folder: the workdir, or the ``UNet2DModel`` folder inside a pipeline.
      model_config: its normalized model config.
    """

    path: str
    kind: str
    folder: str
    model_config: Mapping[str, Any]

    def load_params(self) -> Any:
        """The source's weights (the EMA of a workdir) as host numpy arrays, float32, in the params tree of
        ``jaxdiff.models.functional``."""
        if self.kind == "workdir":
            return to_host(load_workdir(self.folder, ema=True, log=lambda message: None).params)
        _, params, _ = load_unet(self.folder)
        return jax.tree.map(np.asarray, params)

    def describe(self) -> str:
        what = "the EMA weights of the run" if self.kind == "workdir" else "the diffusers UNet"
        return f"{what} in {self.folder}"


def _locate(path: str) -> tuple[str, str]:
    """``(kind, folder)`` of an ``init_from`` path (see the module docstring), or a ``UserError``."""
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise UserError(
            f"train.init_from={path!r} is not a folder; give a train.py workdir or a diffusers UNet / "
            "pipeline folder"
        )
    if os.path.exists(os.path.join(root, MODEL_INDEX_NAME)) or os.path.isfile(
        os.path.join(root, "unet", "config.json")
    ):
        return "diffusers", os.path.join(root, "unet")
    config_path = os.path.join(root, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"train.init_from={path!r}: cannot read {config_path}: {e}") from None
        if isinstance(config, dict) and "model" in config and "train" in config:
            return "workdir", root
        return "diffusers", root
    raise UserError(
        f"train.init_from={path!r} holds no config.json: neither a train.py workdir nor a diffusers UNet "
        "(config.json) or pipeline (model_index.json) folder"
    )


def _compare(path: str, there: Mapping[str, Any], here: Mapping[str, Any]) -> None:
    """``UserError`` naming the first model key whose value differs (``IGNORED_MODEL_KEYS`` aside)."""
    for key in [*here, *(k for k in there if k not in here)]:
        if key in IGNORED_MODEL_KEYS or key.startswith("_") and key != "_class_name":
            continue
        if there.get(key) != here.get(key):
            raise UserError(
                f"train.init_from={path!r}: model.{key} is {there.get(key)!r} there, {here.get(key)!r} here; "
                "fine-tuning needs the same model config"
            )


def resolve_init_from(run: RunConfig) -> InitSource | None:
    """The run's checked ``train.init_from`` source, or None when it is unset.

    Raises ``UserError`` (one line) for a missing or unrecognised folder and for a model config that
    differs from the run's (naming the first differing key and both values).
    """
    path = run.train.init_from
    if not path:
        return None
    kind, folder = _locate(path)
    if kind == "workdir":
        there = parse_run_config(load_config_json(os.path.join(folder, "config.json")), log=lambda m: None)
        model = there.model
    else:
        model = read_unet_config(folder)
    _compare(path, model, run.model)
    return InitSource(path=path, kind=kind, folder=folder, model_config=model)


def params_like(template: Any, params: Any) -> Any:
    """``params`` laid out as ``template`` (same paths, shapes; ``template``'s dtypes), or a ``UserError``
    naming the first parameter that is missing or has another shape."""
    loaded = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

    def one(path: Any, want: Any) -> np.ndarray:
        key = jax.tree_util.keystr(path)
        if key not in loaded:
            raise UserError(f"train.init_from: the source has no parameter {key} that the model needs")
        got = np.asarray(loaded[key])
        if got.shape != np.shape(want):
            raise UserError(
                f"train.init_from: parameter {key} has shape {got.shape} there, {np.shape(want)} here"
            )
        return got.astype(np.asarray(want).dtype)

    return jax.tree_util.tree_map_with_path(one, template)
