"""Drawing images from a model, batched and sharded over the devices.

- :func:`make_sample_fn`: a jitted ``fn(params, key, i) -> images`` for batch ``i`` of a
  :class:`jaxdiff.objectives.Sampling` procedure; the noise batch is split over the mesh's devices, the
  parameters keep their sharding; each device evaluates the model on its rows in passes
  (``jaxdiff.execution.passes``; ``microbatch_size`` 0: the automatic rule). Optionally class labels,
  classifier-free guidance and loss guidance (``jaxdiff.guidance``).
- :func:`generate`: as many batches as needed; batch ``i`` uses ``fold_in(PRNGKey(seed), i)``, so a seed
  gives the same images on any number of devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.execution import passes
from jaxdiff.guidance import (
    LossGuidance,
    check_guidance_for_model,
    check_guidance_rescale,
    check_guidance_scale,
    classifier_free_guidance,
    parse_class_labels,
)
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
      num_classes: the model's class count (None: unconditional).
      class_labels: the labels asked for (image ``g`` of a run gets ``class_labels[g % len]``), or None.
      guidance_scale, guidance_rescale: classifier-free guidance (1, 0: none).
    """

    fn: Callable[..., Any]
    batch_size: int
    padded_batch: int
    image_shape: tuple[int, int, int]
    num_steps: int
    intermediates_every: int | None
    num_classes: int | None = None
    class_labels: tuple[int, ...] | None = None
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0

    def image_labels(self, num_samples: int) -> np.ndarray | None:
        """int32 ``[num_samples]``: the class label of each image :func:`generate` returns (image ``g`` is
        row ``g % batch_size`` of batch ``g // batch_size``); None for an unconditional model."""
        if not self.num_classes:
            return None
        g = np.arange(num_samples)
        if self.class_labels is not None:
            return np.asarray(self.class_labels, np.int32)[g % len(self.class_labels)]
        batch, row = np.divmod(g, self.batch_size)
        return ((batch * self.padded_batch + row) % self.num_classes).astype(np.int32)


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
    class_labels: Sequence[int] | str | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    null_label: int | None = None,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    loss_scale: float = 0.0,
) -> SampleFn:
    """Build the jitted sampler of one batch.

    Args:
      apply_fn: the model's ``apply_fn`` (``jaxdiff.models.functional``).
      sampling: the procedure (``objective.make_sampling(...)``, see ``jaxdiff.objectives``).
      image_shape: ``(H, W, C)``.
      mesh, param_sharding: the device mesh and the sharding pytree of the params passed to ``fn``.
      batch_size: images per call.
      num_classes: the class count K of a class-conditional model (None: unconditional). Without
        ``class_labels``, image ``j`` of batch ``i`` gets class ``(i * padded_batch + j) % num_classes``.
      intermediates_every: also return the denoising snapshots every k steps: ``frames`` is
        ``{"x_t": [M, B, H, W, C], "pred_x0": [M, B, H, W, C]}``.
      microbatch_size: images per device per model evaluation: a divisor of the per-device batch, or 0
        for the automatic choice (``jaxdiff.execution.passes.pass_size``). With guidance the model sees
        twice the rows; passes are chosen for that doubled batch.
      class_labels: labels in ``0..K-1`` (a sequence of ints, ``"0,1,2"`` or ``"all"``): image ``g`` of the
        whole run (``g = i * batch_size + j``) gets ``class_labels[g % len(class_labels)]``, whatever the
        batch size and device count.
      guidance_scale: classifier-free guidance ``s >= 0``; 1 is off (no doubled batch). Other values need
        ``null_label``.
      guidance_rescale: ``phi`` in ``[0, 1]`` (Lin et al. 2023), used when guided.
      null_label: the "no class" id of a model trained with label dropout (K), or None.
      loss_fn, loss_scale: loss guidance (``jaxdiff.guidance.LossGuidance``): ``loss_fn(pred_x0
        [1, H, W, C] in [-1, 1], t [1]) -> scalar`` per image, each step moving ``x_t`` by ``-loss_scale``
        times its gradient through the model. None: no loss guidance.

    Raises ``UserError`` (one line) for a label out of range, labels for an unconditional model, a
    negative guidance scale, a rescale outside ``[0, 1]`` or guidance without a null label.
    """
    n_dev = mesh.devices.size
    padded = -(-batch_size // n_dev) * n_dev
    shape = tuple(int(v) for v in image_shape)
    batch_spec = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    replicated = NamedSharding(mesh, PartitionSpec())
    # A bad microbatch_size fails here, before anything is compiled; the automatic size reads the model's
    # width from the parameters when the function is traced.
    passes.pass_size(microbatch_size, padded // n_dev, image_hw=shape[:2], width=None, platform="")
    scale = check_guidance_scale(guidance_scale)
    rescale = check_guidance_rescale(guidance_rescale)
    labels_asked = parse_class_labels(class_labels, num_classes)
    check_guidance_for_model(scale, num_classes, null_label)
    guide = None if loss_fn is None else LossGuidance(loss_fn, loss_scale)
    # With guidance each device's rows are evaluated twice (conditional, unconditional) in one call.
    model_rows = padded if scale == 1 else 2 * padded

    def fn(params: Any, key: jax.Array, batch_index: jax.Array) -> Any:
        key = jax.random.fold_in(key, batch_index)
        noise_key, sample_key = jax.random.split(key)
        x = jax.lax.with_sharding_constraint(sampling.initial_noise(noise_key, (padded, *shape)), batch_spec)
        labels = None
        rows = jnp.arange(padded, dtype=jnp.int32)
        if labels_asked is not None:
            table = jnp.asarray(labels_asked, jnp.int32)
            labels = table[(batch_index * batch_size + rows) % len(labels_asked)]
        elif num_classes:
            labels = (batch_index * padded + rows) % num_classes
        if labels is not None:
            labels = jax.lax.with_sharding_constraint(labels, batch_spec)
        model = passes.in_passes_for_batch(
            apply_fn, params, (model_rows, *shape), microbatch_size=microbatch_size, batch_sharding=batch_spec
        )
        model_fn = classifier_free_guidance(
            lambda x_t, t, y: model(params, x_t, t, y),
            labels,
            null_label=null_label,
            guidance_scale=scale,
            guidance_rescale=rescale,
            batch_sharding=batch_spec,
        )
        return sampling.run(model_fn, x, sample_key, intermediates_every, loss_guidance=guide)

    jitted = jax.jit(fn, in_shardings=(param_sharding, replicated, replicated), out_shardings=replicated)
    return SampleFn(
        fn=jitted,
        batch_size=batch_size,
        padded_batch=padded,
        image_shape=shape,
        num_steps=int(sampling.num_steps),
        intermediates_every=intermediates_every,
        num_classes=num_classes or None,
        class_labels=labels_asked,
        guidance_scale=scale,
        guidance_rescale=rescale,
    )


def sample_fn_for_run(
    run: RunConfig,
    apply_fn: Callable[..., jax.Array],
    *,
    mesh: Mesh,
    param_sharding: Any,
    batch_size: int,
    class_labels: Sequence[int] | str | None = None,
) -> SampleFn:
    """:func:`make_sample_fn` with a run's ``sample`` section (sampler, steps, eta, passes, guidance scale
    and rescale), image shape, classes, null label and objective: what the training grids and evaluations
    draw. ``class_labels``: as ``make_sample_fn``'s (None: every class in turn)."""
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
        class_labels=class_labels,
        guidance_scale=s.guidance_scale,
        guidance_rescale=s.guidance_rescale,
        null_label=run.null_label,
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
