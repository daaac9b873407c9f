"""The diffusers export: a trained model's weights and its scheduler as a diffusers pipeline folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax

from jaxdiff.errors import UserError
from jaxdiff.interop import save_pipeline
from jaxdiff.objectives import get_objective
from jaxdiff.sharding import to_host

__all__ = ["export_diffusers", "export_scheduler_config"]


def export_scheduler_config(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler config saved with an exported pipeline: the objective's (``DDPMScheduler`` with the
    training schedule for ``ddpm``, ``EDMEulerScheduler`` for ``edm``, ``FlowMatchEulerDiscreteScheduler``
    with its ``shift`` for ``flow``); ``UserError`` for an objective diffusers cannot sample."""
    objective = get_objective(diffusion.get("objective", "ddpm"))
    if objective.export_scheduler is None:
        raise UserError(f"diffusion.objective={objective.name!r} has no diffusers scheduler to export")
    return objective.export_scheduler(diffusion)


def export_diffusers(
    model_config: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    params: Any,
    directory: str | os.PathLike,
    *,
    null_label: int | None = None,
) -> str | None:
    """Write ``params`` (the EMA weights) and the objective's scheduler as a diffusers pipeline folder
    (``DiffusionPipeline.from_pretrained`` loads it: a ``DDPMPipeline``, or for EDM a
    ``ConsistencyModelPipeline``, whose loop scales the model input as the EDM scheduler asks).

    ``model_config``: the normalized model config; ``diffusion``: the ``diffusion`` section (a mapping).
    A class-conditional model keeps its class embedding (diffusers' ``num_class_embeds``: call the UNet
    with ``class_labels``); ``null_label`` (``RunConfig.null_label``, the id classifier-free guidance uses
    for "no class") is written to ``jaxdiff.json`` beside ``model_index.json`` as
    ``{"num_classes": null_label, "null_label": null_label}``, which diffusers ignores and
    ``jaxdiff.inference.load_pretrained`` reads.
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
    save_pipeline(
        tmp,
        host,
        dict(model_config),
        export_scheduler_config(diffusion),
        pipeline_class=objective.pipeline_class,
        jaxdiff_metadata=None
        if null_label is None
        else {"num_classes": null_label, "null_label": null_label},
    )
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory
