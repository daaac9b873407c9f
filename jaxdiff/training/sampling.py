"""Drawing images from a model, batched and sharded over the devices, and the diffusers export.

Used by the train loop (the periodic EMA grids, the final export) and by ``sample.py``.

- ``scheduler_config(diffusion, sampler)``: the diffusers scheduler config of a short sampler name for a
  model trained with the ``diffusion`` config section (its schedule and prediction type, and for DDPM /
  DDIM its clipping, spacing and variance options).
- ``make_sample_fn(...)`` / ``sample_fn_for_config(config, ...)``: a jitted ``fn(params, key, i) -> images``
  for batch ``i``; the noise batch is split over the mesh's devices (``"data"``), the parameters keep their
  training sharding; each device evaluates the model on its rows in passes of ``microbatch_size`` images
  (``jaxdiff.models.passes``; 0: automatic, passes on a CPU for large activations).
- ``generate(fn, params, seed, num_samples)``: as many batches as needed; batch ``i`` uses
  ``fold_in(PRNGKey(seed), i)``, so a seed gives the same images on any number of devices.
- ``export_diffusers(config, params, dir)``: a ``DDPMPipeline`` folder (``interop.save_pipeline``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.errors import UserError

__all__ = [
    "SampleFn",
    "scheduler_config",
    "export_scheduler_config",
    "make_sample_fn",
    "sample_fn_for_config",
    "generate",
    "to_host",
    "export_diffusers",
    "LoadedModel",
    "load_workdir",
    "load_pretrained",
]

# diffusers scheduler keys taken from the training `diffusion` section, per sampler (beyond the noise
# schedule and prediction type, which every sampler gets). DPM-Solver++ and Euler keep their own defaults
# for spacing (diffusers' pipelines use them so).
_THRESHOLDING = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")
_EXTRA_KEYS = {
    "ddpm": (
        "variance_type",
        "clip_sample",
        "clip_sample_range",
        "timestep_spacing",
        "steps_offset",
        *_THRESHOLDING,
    ),
    "ddim": ("clip_sample", "clip_sample_range", "timestep_spacing", "steps_offset", *_THRESHOLDING),
    "dpm++": (),
    "euler": (),
}


def _as_dict(section: Any) -> dict[str, Any]:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def scheduler_config(diffusion: Mapping[str, Any] | Any, sampler: str) -> dict[str, Any]:
    """A diffusers scheduler config (``_class_name`` included) for ``sampler`` in ddpm|ddim|dpm++|euler."""
    from jaxdiff import samplers

    if sampler not in _EXTRA_KEYS:
        raise UserError(f"sampler {sampler!r} is not one of {', '.join(_EXTRA_KEYS)}")
    d = _as_dict(diffusion)
    extra = {k: d[k] for k in _EXTRA_KEYS[sampler] if k in d and d[k] is not None}
    return samplers.scheduler_config_for(sampler, d, **extra)


def export_scheduler_config(diffusion: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``DDPMScheduler`` config saved with an exported pipeline."""
    return scheduler_config(diffusion, "ddpm")


@dataclasses.dataclass
class SampleFn:
    """One jitted batch of sampling: ``fn(params, key, batch_index) -> images`` (or ``(images, frames)``).

    Attributes:
      fn: the jitted function; outputs are replicated global arrays of ``padded_batch`` images.
      batch_size: images per batch that the caller keeps (``padded_batch`` rounds it up to the devices).
      padded_batch: the batch actually computed, a multiple of the device count.
      image_shape: ``(H, W, C)``.
      num_steps: the sampler's number of model evaluations.
      intermediates_every: None, or the spacing of the recorded denoising snapshots.
    """

    fn: Callable[..., Any]
    batch_size: int
    padded_batch: int
    image_shape: tuple[int, int, int]
    num_steps: int
    intermediates_every: int | None


def make_sample_fn(
    apply_fn: Callable[..., jax.Array],
    *,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
    param_sharding: Any,
    scheduler: Mapping[str, Any] | None,
    num_inference_steps: int,
    eta: float = 0.0,
    batch_size: int = 64,
    num_classes: int | None = None,
    intermediates_every: int | None = None,
    microbatch_size: int = 0,
) -> SampleFn:
    """Build the jitted sampler of one batch.

    Args:
      apply_fn: the model's ``apply_fn`` (``jaxdiff.models.functional``).
      image_shape: ``(H, W, C)``.
      mesh, param_sharding: the device mesh and the sharding pytree of the params passed to ``fn``.
      scheduler: a diffusers scheduler config (``_class_name`` included; see :func:`scheduler_config`), or
        None for the course's "from scratch" sampler (``corruption.from_scratch_sample``).
      num_inference_steps, eta: how many steps; DDIM's eta (ignored by the other samplers).
      batch_size: images per call.
      num_classes: for a class-conditional model, image ``j`` of batch ``i`` gets class
        ``(i * padded_batch + j) % num_classes``.
      intermediates_every: also return the denoising snapshots every k steps: ``frames`` is
        ``{"x_t": [M, B, H, W, C], "pred_x0": [M, B, H, W, C]}``.
      microbatch_size: images per device per model evaluation (``jaxdiff.models.passes``): a divisor of
        the per-device batch, or 0 for the automatic choice (passes only on a CPU, for large activations).
    """
    from jaxdiff import samplers
    from jaxdiff.models import passes

    n_dev = mesh.devices.size
    padded = -(-batch_size // n_dev) * n_dev
    shape = tuple(int(v) for v in image_shape)
    batch_spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    replicated = NamedSharding(mesh, PartitionSpec())
    # A bad microbatch_size fails here, before anything is compiled; the automatic size reads the model's
    # width from the parameters when the function is traced.
    passes.pass_size(microbatch_size, padded // n_dev, image_hw=shape[:2], width=None, platform="")

    def model_in_passes(params: Any) -> Callable[..., jax.Array]:
        return passes.in_passes_for_batch(
            apply_fn, params, (padded, *shape), microbatch_size=microbatch_size, batch_sharding=batch_spec
        )

    if scheduler is None:
        from jaxdiff import corruption

        num_steps = int(num_inference_steps)

        def run(params, x, key, labels):
            del key, labels
            out = corruption.from_scratch_sample(
                model_in_passes(params),
                params,
                x,
                num_steps,
                return_intermediates=intermediates_every is not None,
            )
            if intermediates_every is None:
                return out
            x0, hist = out
            keep = np.unique(np.append(np.arange(0, num_steps, intermediates_every), num_steps - 1))
            return x0, {"x_t": hist["x"][keep], "pred_x0": hist["pred"][keep]}

        def noise(key, n):
            return corruption.from_scratch_noise(key, (n, *shape))

    else:
        cfg = dict(scheduler)
        overrides = {"eta": float(eta)} if cfg.get("_class_name") == "DDIMScheduler" else {}
        smp = samplers.from_diffusers_config(cfg, int(num_inference_steps), **overrides)
        num_steps = smp.num_steps

        def run(params, x, key, labels):
            model = model_in_passes(params)
            model_fn = lambda x_t, t: model(params, x_t, t, labels)
            out = samplers.sample(smp, model_fn, x, key, intermediates_every=intermediates_every)
            if intermediates_every is None:
                return out
            return out[0], {"x_t": out[1]["x_t"], "pred_x0": out[1]["pred_x0"]}

        def noise(key, n):
            return jax.random.normal(key, (n, *shape), jnp.float32)

    def fn(params, key, batch_index):
        key = jax.random.fold_in(key, batch_index)
        noise_key, sample_key = jax.random.split(key)
        x = jax.lax.with_sharding_constraint(noise(noise_key, padded), batch_spec)
        labels = None
        if num_classes:
            labels = (batch_index * padded + jnp.arange(padded, dtype=jnp.int32)) % num_classes
            labels = jax.lax.with_sharding_constraint(labels, batch_spec)
        return run(params, x, sample_key, labels)

    jitted = jax.jit(fn, in_shardings=(param_sharding, replicated, replicated), out_shardings=replicated)
    return SampleFn(
        fn=jitted,
        batch_size=batch_size,
        padded_batch=padded,
        image_shape=shape,
        num_steps=int(num_steps),
        intermediates_every=intermediates_every,
    )


def sample_fn_for_config(
    config: Any,
    apply_fn: Callable[..., jax.Array],
    *,
    mesh: Mesh,
    param_sharding: Any,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    eta: float | None = None,
    batch_size: int | None = None,
    intermediates_every: int | None = None,
) -> SampleFn:
    """:func:`make_sample_fn` for a run config: image shape from ``data``, classes from ``model``, the
    scheduler from ``diffusion`` (the ``from_scratch`` objective uses the course's sampler); ``sampler``,
    ``num_inference_steps``, ``eta`` and ``batch_size`` default to the ``sample`` section's."""
    from jaxdiff.training.config import class_conditional

    s = config.sample
    sampler = s.sampler if sampler is None else sampler
    objective = config.diffusion.get("objective", "ddpm")
    return make_sample_fn(
        apply_fn,
        image_shape=(config.data.image_size, config.data.image_size, config.data.channels),
        mesh=mesh,
        param_sharding=param_sharding,
        scheduler=None if objective == "from_scratch" else scheduler_config(config.diffusion, sampler),
        num_inference_steps=s.num_inference_steps if num_inference_steps is None else num_inference_steps,
        eta=s.eta if eta is None else eta,
        batch_size=s.batch_size if batch_size is None else batch_size,
        num_classes=config.model.get("num_class_embeds") if class_conditional(config) else None,
        intermediates_every=intermediates_every,
        microbatch_size=s.get("microbatch_size", 0),  # (absent from configs saved before it existed)
    )


def to_host(tree: Any) -> Any:
    """Global arrays -> numpy on every process (gathering across processes when needed)."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def generate(
    sample_fn: SampleFn, params: Any, *, seed: int, num_samples: int
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """``num_samples`` images float32 ``[N, H, W, C]`` in about ``[-1, 1]`` (and the snapshots
    ``[M, N, H, W, C]`` when the function records them), on every process."""
    key = jax.random.PRNGKey(seed)
    images, frames = [], []
    for i in range(-(-num_samples // sample_fn.batch_size)):
        out = to_host(sample_fn.fn(params, key, jnp.int32(i)))
        if sample_fn.intermediates_every is None:
            images.append(out[: sample_fn.batch_size])
        else:
            images.append(out[0][: sample_fn.batch_size])
            frames.append({k: v[:, : sample_fn.batch_size] for k, v in out[1].items()})
    x = np.concatenate(images)[:num_samples]
    if sample_fn.intermediates_every is None:
        return x
    stacked = {k: np.concatenate([f[k] for f in frames], axis=1)[:, :num_samples] for k in frames[0]}
    return x, stacked


def export_diffusers(config: Any, params: Any, directory: str | os.PathLike) -> str | None:
    """Write ``params`` (the EMA weights) and the training schedule as a diffusers ``DDPMPipeline`` folder.

    Written to a temporary folder and renamed, so ``directory`` is always a complete pipeline. Returns
    the directory, or None (with nothing written) for models diffusers has no class for (``BasicUNet``)
    or the ``from_scratch`` objective. Every process must call it (arrays may need gathering); the main
    process writes.
    """
    from jaxdiff.interop import save_pipeline
    from jaxdiff.training.config import normalized_model_config

    model_config = normalized_model_config(config)
    if model_config["_class_name"] != "UNet2DModel" or config.diffusion.get("objective", "ddpm") != "ddpm":
        return None
    host = to_host(params)
    if jax.process_index() != 0:
        return os.fspath(directory)
    directory = os.path.abspath(os.fspath(directory))
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pipeline(tmp, host, model_config, export_scheduler_config(config.diffusion))
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


@dataclasses.dataclass
class LoadedModel:
    """A model ready to sample: from a run (:func:`load_workdir`) or diffusers (:func:`load_pretrained`).

    Attributes:
      apply_fn, params: the network (params are global arrays on ``mesh``).
      mesh, param_sharding: where the params live.
      image_shape: ``(H, W, C)``.
      scheduler_base: the diffusion / scheduler config the samplers' configs are built from (None: the
        course's from-scratch model, whose sampler takes no scheduler).
      num_train_timesteps: the allowed range of sampling steps is ``1..num_train_timesteps``.
      num_classes: class count of a class-conditional model, else None.
      default_sampler, default_steps, default_eta: what to use when the user does not say.
    """

    apply_fn: Callable[..., jax.Array]
    params: Any
    mesh: Mesh
    param_sharding: Any
    image_shape: tuple[int, int, int]
    scheduler_base: dict[str, Any] | None
    num_train_timesteps: int
    num_classes: int | None = None
    default_sampler: str = "ddim"
    default_steps: int = 50
    default_eta: float = 0.0

    def sample_fn(
        self,
        *,
        sampler: str,
        num_inference_steps: int,
        eta: float = 0.0,
        batch_size: int = 64,
        intermediates_every: int | None = None,
        microbatch_size: int = 0,
    ) -> SampleFn:
        scheduler = None if self.scheduler_base is None else scheduler_config(self.scheduler_base, sampler)
        return make_sample_fn(
            self.apply_fn,
            image_shape=self.image_shape,
            mesh=self.mesh,
            param_sharding=self.param_sharding,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            eta=eta,
            batch_size=batch_size,
            num_classes=self.num_classes,
            intermediates_every=intermediates_every,
            microbatch_size=microbatch_size,
        )


def load_workdir(
    workdir: str | os.PathLike, *, ema: bool = True, log: Callable[[str], None] | None = None
) -> LoadedModel:
    """The newest usable checkpoint of a ``train.py`` run (its ``config.json`` says which model).

    Raises ``UserError`` when the folder holds no run config or no checkpoint. Nothing is written.
    """
    from etils import epath

    from jaxdiff.checkpointing import Checkpointer
    from jaxdiff.training.config import class_conditional, load_config_json, validate_config
    from jaxdiff.training.loop import _check_same_model, build_components, checkpoint_dir

    workdir = os.path.abspath(os.fspath(workdir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} does not exist")
    if not os.path.exists(config_path):
        raise UserError(f"--workdir {workdir!r} has no config.json: it is not a train.py run directory")
    config = load_config_json(config_path)
    validate_config(config)
    ckpt_dir = checkpoint_dir(config, workdir)
    ckpt_path = epath.Path(ckpt_dir)
    if not ckpt_path.is_dir() or not any(p.name.isdigit() for p in ckpt_path.iterdir()):
        raise UserError(
            f"no checkpoint in {ckpt_dir!r}: train first (python train.py --workdir {workdir} ...)"
        )
    c = build_components(config, check_batch_size=False)
    with Checkpointer(ckpt_dir, read_only=True, async_save=False, log=log) as ckpt:
        restored = ckpt.restore(
            c.abstract_state, check_meta=_check_same_model(workdir, c.fingerprint, c.model_config)
        )
    if restored is None:
        raise UserError(f"no checkpoint in {ckpt_dir!r}: train first")
    state = restored.state
    objective = config.diffusion.get("objective", "ddpm")
    return LoadedModel(
        apply_fn=c.apply_fn,
        params=state.ema_params if ema else state.params,
        mesh=c.mesh,
        param_sharding=c.state_sharding.ema_params,
        image_shape=(config.data.image_size, config.data.image_size, config.data.channels),
        scheduler_base=None if objective == "from_scratch" else _as_dict(config.diffusion),
        num_train_timesteps=int(config.diffusion.num_train_timesteps),
        num_classes=config.model.get("num_class_embeds") if class_conditional(config) else None,
        default_sampler=config.sample.sampler,
        default_steps=int(config.sample.num_inference_steps),
        default_eta=float(config.sample.eta),
    )


def load_pretrained(path: str | os.PathLike, *, image_size: int | None = None) -> LoadedModel:
    """A diffusers pipeline folder (``model_index.json`` + ``unet/`` + ``scheduler/``), or a
    ``UNet2DModel`` folder (``config.json`` + weights; diffusers' default ``DDPMScheduler`` then).

    The parameters are replicated over all devices.
    """
    from jaxdiff.interop import load_pipeline, load_unet
    from jaxdiff.training import mesh as mesh_lib
    from jaxdiff.training.loop import put_global

    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise UserError(f"--pretrained {root!r} is not a folder")
    if os.path.exists(os.path.join(root, "model_index.json")):
        apply_fn, params, unet_config, sched = load_pipeline(root)
        sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    elif os.path.exists(os.path.join(root, "unet", "config.json")):
        apply_fn, params, unet_config = load_unet(os.path.join(root, "unet"))
        sched = {}
    elif os.path.exists(os.path.join(root, "config.json")):
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
    mesh = mesh_lib.make_mesh()
    shardings = mesh_lib.tree_shardings(mesh, params)
    embeds = unet_config.get("num_class_embeds")
    return LoadedModel(
        apply_fn=apply_fn,
        params=put_global(params, shardings),
        mesh=mesh,
        param_sharding=shardings,
        image_shape=(height, width, int(unet_config["in_channels"])),
        scheduler_base=sched,
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
        num_classes=int(embeds) if embeds else None,
    )
