"""Models ready to sample: from a ``train.py`` workdir or from a diffusers folder.

- :func:`load_workdir`: the run's ``config.json`` and only the weights it needs from the newest usable
  checkpoint (the EMA or the raw parameters, through orbax's partial restore: no optimizer state is read).
- :func:`load_pretrained`: a diffusers pipeline folder or ``UNet2DModel`` folder.

Both return a :class:`LoadedModel` whose :meth:`~LoadedModel.sample_fn` builds a jitted sampler for any
sampler name and step count. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxdiff import models, sharding
from jaxdiff.checkpointing import has_checkpoints, restore_subtree, same_model_check
from jaxdiff.errors import UserError
from jaxdiff.inference.generate import SampleFn, make_sample_fn
from jaxdiff.interop import load_pipeline, load_unet, read_jaxdiff_metadata
from jaxdiff.objectives import Objective, get_objective, objective_for_scheduler
from jaxdiff.run_config import load_config_json, parse_run_config

__all__ = ["LoadedModel", "checkpoint_dir", "load_pretrained", "load_workdir"]


@dataclasses.dataclass
class LoadedModel:
    """A model ready to sample.

    Attributes:
      apply_fn, params: the network (params are global arrays on ``mesh``, replicated).
      mesh, param_sharding: where the params live.
      image_shape: ``(H, W, C)``.
      objective: how it was trained (``jaxdiff.objectives``): which samplers apply and how.
      diffusion: the diffusion / scheduler config the samplers are built from.
      num_train_timesteps: the allowed range of sampling steps is ``1..num_train_timesteps``.
      num_classes: class count of a class-conditional model (the real classes 0..K-1), else None.
      null_label: the class id meaning "no class" (K) of a model trained with label dropout
        (``data.num_classes``), which classifier-free guidance needs; None when the model has none.
      default_sampler, default_steps, default_eta: what to use when the user does not say.
    """

    apply_fn: Callable[..., jax.Array]
    params: Any
    mesh: Mesh
    param_sharding: Any
    image_shape: tuple[int, int, int]
    objective: Objective
    diffusion: Mapping[str, Any]
    num_train_timesteps: int
    num_classes: int | None = None
    null_label: int | None = None
    default_sampler: str = "ddim"
    default_steps: int = 50
    default_eta: float = 0.0
    default_guidance_scale: float = 1.0
    default_guidance_rescale: float = 0.0

    def sample_fn(
        self,
        *,
        sampler: str,
        num_inference_steps: int,
        eta: float = 0.0,
        batch_size: int = 64,
        intermediates_every: int | None = None,
        microbatch_size: int = 0,
        class_labels: Sequence[int] | str | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        loss_scale: float = 0.0,
    ) -> SampleFn:
        """A jitted sampler of ``batch_size`` images (``jaxdiff.inference.generate.make_sample_fn``, whose
        arguments these are); ``guidance_scale`` / ``guidance_rescale`` None: the run's defaults."""
        sampling = self.objective.make_sampling(self.diffusion, sampler, num_inference_steps, eta)
        return make_sample_fn(
            self.apply_fn,
            sampling,
            image_shape=self.image_shape,
            mesh=self.mesh,
            param_sharding=self.param_sharding,
            batch_size=batch_size,
            num_classes=self.num_classes,
            intermediates_every=intermediates_every,
            microbatch_size=microbatch_size,
            class_labels=class_labels,
            guidance_scale=self.default_guidance_scale if guidance_scale is None else guidance_scale,
            guidance_rescale=self.default_guidance_rescale if guidance_rescale is None else guidance_rescale,
            null_label=self.null_label,
            loss_fn=loss_fn,
            loss_scale=loss_scale,
        )


def checkpoint_dir(train_checkpoint_dir: str, workdir: str) -> str:
    """``train.checkpoint_dir`` (e.g. ``gs://bucket/run``, shared by the hosts of a pod slice), else
    ``<workdir>/checkpoints``."""
    return train_checkpoint_dir or os.path.join(workdir, "checkpoints")


def _replicated(params: Any, mesh: Mesh) -> tuple[Any, Any]:
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), params)
    return sharding.put_global(params, shardings), shardings


def load_workdir(
    workdir: str | os.PathLike, *, ema: bool = True, log: Callable[[str], None] | None = None
) -> LoadedModel:
    """The newest usable checkpoint of a ``train.py`` run (its ``config.json`` says which model).

    ``ema``: the EMA weights (else the raw ones). Raises ``UserError`` when the folder holds no run config
    or no checkpoint, or a checkpoint of another model. Nothing is written.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} does not exist")
    if not os.path.exists(config_path):
        raise UserError(f"--workdir {workdir!r} has no config.json: it is not a train.py run directory")
    run = parse_run_config(load_config_json(config_path), log=lambda message: None)
    ckpt_dir = checkpoint_dir(run.train.checkpoint_dir, workdir)
    if not has_checkpoints(ckpt_dir):
        raise UserError(
            f"no checkpoint in {ckpt_dir!r}: train first (python train.py --workdir {workdir} ...)"
        )
    mesh = sharding.make_mesh()
    abstract_model = nnx.eval_shape(
        lambda: models.create_model(run.model, rngs=nnx.Rngs(0), dtype=run.compute_dtype)
    )
    apply_fn, abstract_params = models.functional(abstract_model)
    param_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_params)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params, param_sharding
    )
    restored = restore_subtree(
        ckpt_dir,
        "ema_params" if ema else "params",
        abstract,
        check_meta=same_model_check(workdir, run.model_fingerprint, run.model),
        log=log,
    )
    if restored is None:
        raise UserError(f"no checkpoint in {ckpt_dir!r}: train first")
    return LoadedModel(
        apply_fn=apply_fn,
        params=restored[1],
        mesh=mesh,
        param_sharding=param_sharding,
        image_shape=run.image_shape,
        objective=run.objective,
        diffusion=run.diffusion.to_dict(),
        num_train_timesteps=run.diffusion.num_train_timesteps,
        num_classes=run.num_classes,
        null_label=run.null_label,
        default_sampler=run.sample.sampler,
        default_steps=run.sample.num_inference_steps,
        default_eta=run.sample.eta,
        default_guidance_scale=run.sample.guidance_scale,
        default_guidance_rescale=run.sample.guidance_rescale,
    )


def _class_facts(root: str, embeds: int | None) -> tuple[int | None, int | None]:
    """``(num_classes, null_label)`` of a diffusers folder: from the ``jaxdiff.json`` that a jaxdiff export
    writes (K real classes, null label K of K + 1 embeddings), else every embedding a class and no null
    label."""
    meta = read_jaxdiff_metadata(root)
    null = meta.get("null_label")
    if null is None or not embeds:
        return (int(embeds) if embeds else None), None
    if not isinstance(null, int) or isinstance(null, bool) or not 0 <= null < int(embeds):
        raise UserError(
            f"{os.path.join(root, 'jaxdiff.json')!r} has null_label={null!r}; allowed: an integer "
            f"in 0..{int(embeds) - 1} (the UNet has num_class_embeds={embeds})"
        )
    return null, null  # the real classes are the ids below the null label


def load_pretrained(path: str | os.PathLike, *, image_size: int | None = None) -> LoadedModel:
    """A diffusers pipeline folder (``model_index.json`` + ``unet/`` + ``scheduler/``), or a
    ``UNet2DModel`` folder (``config.json`` + weights; diffusers' default ``DDPMScheduler`` then).

    The parameters are replicated over all devices.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise UserError(f"--pretrained {root!r} is not a folder")
    if os.path.exists(os.path.join(root, "model_index.json")):
        apply_fn, params, unet_config, sched = load_pipeline(root)
        objective = objective_for_scheduler(sched.get("_class_name"))
        sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    elif os.path.exists(os.path.join(root, "unet", "config.json")):
        objective = get_objective("ddpm")
        apply_fn, params, unet_config = load_unet(os.path.join(root, "unet"))
        sched = {}
    elif os.path.exists(os.path.join(root, "config.json")):
        objective = get_objective("ddpm")
        apply_fn, params, unet_config = load_unet(root)
        sched = {}
    else:
        raise UserError(
            f"--pretrained {root!r} holds no diffusers pipeline (model_index.json) or UNet (config.json)"
        )
    size = unet_config.get("sample_size") if image_size is None else image_size
    if isinstance(size, list | tuple):
        height, width = (int(v) for v in size)
    elif size is None:
        raise UserError(f"the UNet in {root!r} has no sample_size: pass --image_size")
    else:
        height = width = int(size)
    mesh = sharding.make_mesh()
    params, param_sharding = _replicated(jax.tree.map(np.asarray, params), mesh)
    embeds = unet_config.get("num_class_embeds")
    num_classes, null_label = _class_facts(root, embeds)
    return LoadedModel(
        apply_fn=apply_fn,
        params=params,
        mesh=mesh,
        param_sharding=param_sharding,
        image_shape=(height, width, int(unet_config["in_channels"])),
        objective=objective,
        diffusion=sched,
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        num_classes=num_classes,
        null_label=null_label,
        default_sampler="ddim" if objective.name == "ddpm" else objective.sampler_names()[0],
    )
