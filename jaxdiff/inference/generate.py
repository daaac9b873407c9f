"""Drawing images from a model, batched and sharded over the devices.

- :func:`make_sample_fn`: a jitted ``fn(params, key, i) -> images`` for batch ``i`` of a
  :class:`jaxdiff.objectives.Sampling` procedure; the noise batch is split over the mesh's devices, the
  parameters keep their sharding; each device evaluates the model on its rows in passes
  (``jaxdiff.execution.passes``; ``microbatch_size`` 0: the automatic rule).
- :func:`generate`: as many batches as needed; batch ``i`` uses ``fold_in(PRNGKey(seed), i)``, so a seed
  gives the same images on any number of devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.execution import passes
from jaxdiff.objectives import Sampling
from jaxdiff.run_config import RunConfig
from jaxdiff.sharding import BATCH_AXES, to_host

__all__ = ["SampleFn", "generate", "make_sample_fn", "sample_fn_for_run"]


@dataclasses.dataclass
class SampleFn:
    """One jitted batch of sampling: ``fn(params, key, batch_index) -> images`` (or ``(images, frames)``).

    Attributes:
      fn: the jitted function; outputs are replicated global arrays of ``padded_batch`` images.
      batch_size: images per batch that the caller keeps (``padded_batch`` rounds it up to the devices).
      padded_batch: the batch actually computed, a multiple of the device count.
      image_shape: ``(H, W, C)``.
      num_steps: the sampler's loop iterations.
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
    sampling: Sampling,
    *,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
    param_sharding: Any,
    batch_size: int = 64,
    num_classes: int | None = None,
    intermediates_every: int | None = None,
    microbatch_size: int = 0,
) -> SampleFn:
    """Build the jitted sampler of one batch.

    Args:
      apply_fn: the model's ``apply_fn`` (``jaxdiff.models.functional``).
      sampling: the procedure (``objective.make_sampling(...)``, see ``jaxdiff.objectives``).
      image_shape: ``(H, W, C)``.
      mesh, param_sharding: the device mesh and the sharding pytree of the params passed to ``fn``.
      batch_size: images per call.
      num_classes: for a class-conditional model, image ``j`` of batch ``i`` gets class
        ``(i * padded_batch + j) % num_classes``.
      intermediates_every: also return the denoising snapshots every k steps: ``frames`` is
        ``{"x_t": [M, B, H, W, C], "pred_x0": [M, B, H, W, C]}``.
      microbatch_size: images per device per model evaluation: a divisor of the per-device batch, or 0
        for the automatic choice (``jaxdiff.execution.passes.pass_size``).
    """
    n_dev = mesh.devices.size
    padded = -(-batch_size // n_dev) * n_dev
    shape = tuple(int(v) for v in image_shape)
    batch_spec = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    replicated = NamedSharding(mesh, PartitionSpec())
    # A bad microbatch_size fails here, before anything is compiled; the automatic size reads the model's
    # width from the parameters when the function is traced.
    passes.pass_size(microbatch_size, padded // n_dev, image_hw=shape[:2], width=None, platform="")

    def fn(params: Any, key: jax.Array, batch_index: jax.Array) -> Any:
        key = jax.random.fold_in(key, batch_index)
        noise_key, sample_key = jax.random.split(key)
        x = jax.lax.with_sharding_constraint(sampling.initial_noise(noise_key, (padded, *shape)), batch_spec)
        labels = None
        if num_classes:
            labels = (batch_index * padded + jnp.arange(padded, dtype=jnp.int32)) % num_classes
            labels = jax.lax.with_sharding_constraint(labels, batch_spec)
        model = passes.in_passes_for_batch(
            apply_fn, params, (padded, *shape), microbatch_size=microbatch_size, batch_sharding=batch_spec
        )
        return sampling.run(lambda x_t, t: model(params, x_t, t, labels), x, sample_key, intermediates_every)

    jitted = jax.jit(fn, in_shardings=(param_sharding, replicated, replicated), out_shardings=replicated)
    return SampleFn(
        fn=jitted,
        batch_size=batch_size,
        padded_batch=padded,
        image_shape=shape,
        num_steps=int(sampling.num_steps),
        intermediates_every=intermediates_every,
    )


def sample_fn_for_run(
    run: RunConfig, apply_fn: Callable[..., jax.Array], *, mesh: Mesh, param_sharding: Any, batch_size: int
) -> SampleFn:
    """:func:`make_sample_fn` with a run's ``sample`` section (sampler, steps, eta, passes), image shape,
    classes and objective: what the training grids and evaluations draw."""
    s = run.sample
    sampling = run.objective.make_sampling(run.diffusion.to_dict(), s.sampler, s.num_inference_steps, s.eta)
    return make_sample_fn(
        apply_fn,
        sampling,
        image_shape=run.image_shape,
        mesh=mesh,
        param_sharding=param_sharding,
        batch_size=batch_size,
        num_classes=run.num_classes,
        microbatch_size=s.microbatch_size,
    )


def generate(
    sample_fn: SampleFn, params: Any, *, seed: int, num_samples: int
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """``num_samples`` images float32 ``[N, H, W, C]`` as the sampler returns them (and the snapshots
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
