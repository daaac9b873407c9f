"""The diffusers export: a trained model's weights and schedule as a diffusers pipeline folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax

from jaxdiff import samplers
from jaxdiff.errors import UserError
from jaxdiff.interop import save_pipeline
from jaxdiff.objectives import get_objective
from jaxdiff.sharding import to_host

__all__ = ["export_diffusers", "export_scheduler_config"]


def export_scheduler_config(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DDPMScheduler`` config saved with an exported pipeline (the training schedule's keys)."""
    return samplers.scheduler_config_for("ddpm", diffusion)


def export_diffusers(
    model_config: Mapping[str, Any], diffusion: Mapping[str, Any], params: Any, directory: str | os.PathLike
) -> str | None:
    """Write ``params`` (the EMA weights) and the training schedule as a diffusers pipeline folder
    (``DDPMPipeline.from_pretrained`` loads it).

    ``model_config``: the normalized model config; ``diffusion``: the ``diffusion`` section (a mapping).
    Written to a temporary folder and renamed, so ``directory`` is always a complete pipeline. Returns the
    directory, or None (nothing written) for models diffusers has no class for (``BasicUNet``) or
    objectives it cannot sample. Every process must call it (arrays may need gathering); process 0 writes.
    """
    objective = get_objective(diffusion.get("objective", "ddpm"))
    if model_config["_class_name"] != "UNet2DModel" or not objective.exportable:
        return None
    host = to_host(params)
    if jax.process_index() != 0:
        return os.fspath(directory)
    directory = os.path.abspath(os.fspath(directory))
    tmp = directory + ".tmp"
    for path in (directory, tmp):
        if os.path.islink(path):
            raise UserError(
                f"{path} is a symbolic link: the export writes a real folder there; remove the link"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    save_pipeline(tmp, host, dict(model_config), export_scheduler_config(diffusion))
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
