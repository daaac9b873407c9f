"""Guidance at sampling time: classifier-free guidance (CFG) and loss guidance.

- **CFG** (Ho & Salimans 2022), as diffusers' pipelines: the model is evaluated on the conditional and
  the unconditional (null-label) halves in one batched call, ``out = uncond + s * (cond - uncond)``, then
  optionally rescaled towards the conditional output's standard deviation (``guidance_rescale``, Lin et
  al. 2023, diffusers' ``rescale_noise_cfg``). :func:`classifier_free_guidance` wraps a labelled model into
  the ``model_fn(x, t) -> output`` every sampler reads, so it works for every sampler and prediction type.
  ``guidance_scale == 1`` is off: one plain conditional call, no doubled batch.
- **Loss guidance** (the Hugging Face diffusion course, unit 2; diffusers' community guided pipelines):
  at each step the model output at ``x_t`` gives the sampler's predicted ``x0``; a differentiable loss of
  it is differentiated with respect to ``x_t`` *through the model*, ``x_t`` moves to
  ``x_t - scale * grad``, and the sampler's step is taken from the moved ``x_t`` with that same model
  output. :class:`LossGuidance` holds the loss and its scale; the samplers' loops call
  :meth:`LossGuidance.guide` inside their ``lax.scan``.

Nothing here depends on training or on the samplers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaxdiff.errors import UserError

__all__ = [
    "LossGuidance",
    "LabelledModelFn",
    "ModelFn",
    "check_guidance_for_model",
    "check_guidance_rescale",
    "check_guidance_scale",
    "classifier_free_guidance",
    "combine_cfg",
    "double_batch",
    "parse_class_labels",
    "rescale_noise_cfg",
    "split_batch",
]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
LabelledModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# -- checks (one-line UserErrors) -------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_guidance_scale(value: Any, key: str = "guidance_scale") -> float:
    """``value`` as a float >= 0 (1 = no guidance); ``UserError`` naming ``key`` otherwise."""
    if not _is_number(value) or value < 0:
        raise UserError(f"{key}={value!r} is not allowed; use a number >= 0 (1 = no guidance)")
    return float(value)


def check_guidance_rescale(value: Any, key: str = "guidance_rescale") -> float:
    """``value`` as a float in ``[0, 1]`` (0 = no rescaling); ``UserError`` naming ``key`` otherwise."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise UserError(f"{key}={value!r} is not allowed; use a number in [0, 1] (0 = no rescaling)")
    return float(value)


def parse_class_labels(
    spec: Any, num_classes: int | None, key: str = "class_labels"
) -> tuple[int, ...] | None:
    """The class labels a user asked for: None (none given), ``"all"`` (``0..K-1``), a comma-separated
    string ``"0,1,2"`` or a sequence of ints. Each must lie in ``0..num_classes-1``; a model without classes
    (``num_classes`` None) accepts none. ``UserError`` naming ``key`` and the bad value otherwise."""
    if spec is None:
        return None
    if not num_classes:
        raise UserError(f"{key}={spec!r} is not allowed: the model is unconditional (it has no classes)")
    if isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            return tuple(range(num_classes))
        parts = [p.strip() for p in text.split(",")]
        try:
            labels = tuple(int(p) for p in parts)
        except ValueError:
            raise UserError(
                f"{key}={spec!r} is not allowed; use 'all' or comma-separated integers such as 0,1,2"
            ) from None
    else:
        labels = tuple(spec)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
            raise UserError(f"{key}={spec!r} is not allowed; use a sequence of integers")
    if not labels:
        raise UserError(f"{key}={spec!r} is empty; give at least one class label")
    for label in labels:
        if not 0 <= label < num_classes:
            raise UserError(
                f"class label {label} in {key} is out of range; the model's classes are 0..{num_classes - 1}"
            )
    return tuple(int(v) for v in labels)


def check_guidance_for_model(guidance_scale: float, num_classes: int | None, null_label: int | None) -> None:
    """``UserError`` when ``guidance_scale != 1`` asks for CFG from a model without a null label (an
    unconditional model, or a conditional one trained without a null class)."""
    if guidance_scale == 1:
        return
    if not num_classes:
        raise UserError(
            f"guidance_scale={guidance_scale:g} needs a class-conditional model; this one is unconditional "
            "(use guidance_scale=1)"
        )
    if null_label is None:
        raise UserError(
            f"guidance_scale={guidance_scale:g} needs a model trained with a null class (label dropout); "
            "this one has none (use guidance_scale=1)"
        )


# -- classifier-free guidance -----------------------------------------------------------------------------


def rescale_noise_cfg(noise_cfg: jax.Array, noise_pred_text: jax.Array, guidance_rescale: float) -> jax.Array:
    """Lin et al. 2023, section 3.4, as diffusers' ``rescale_noise_cfg``: scale ``noise_cfg`` ``[B, ...]``
    to the per-image standard deviation (unbiased, over all non-batch dimensions) of the conditional
    output ``noise_pred_text``, then mix ``guidance_rescale`` of it with ``1 - guidance_rescale`` of
    ``noise_cfg``."""
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = jnp.std(noise_pred_text, axis=axes, keepdims=True, ddof=1)
    std_cfg = jnp.std(noise_cfg, axis=axes, keepdims=True, ddof=1)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def combine_cfg(
    cond: jax.Array, uncond: jax.Array, guidance_scale: float, guidance_rescale: float = 0.0
) -> jax.Array:
    """``uncond + guidance_scale * (cond - uncond)``, then :func:`rescale_noise_cfg` when
    ``guidance_rescale > 0`` (diffusers' pipelines' order). float32, ``cond``'s shape ``[B, ...]``."""
    cond, uncond = cond.astype(jnp.float32), uncond.astype(jnp.float32)
    out = uncond + guidance_scale * (cond - uncond)
    if guidance_rescale > 0:
        out = rescale_noise_cfg(out, cond, guidance_rescale)
    return out


def _constrain(a: jax.Array, batch_sharding: NamedSharding | None) -> jax.Array:
    if batch_sharding is None:
        return a
    return jax.lax.with_sharding_constraint(a, batch_sharding)


def _shards(batch_sharding: NamedSharding | None) -> int:
    return 1 if batch_sharding is None else batch_sharding.mesh.devices.size


def double_batch(
    first: jax.Array, second: jax.Array, batch_sharding: NamedSharding | None = None
) -> jax.Array:
    """``[B, ...]`` twice -> ``[2B, ...]`` where each device's rows are its rows of ``first`` then its rows of
    ``second``: no row leaves its device (a plain concatenation would move half of them)."""
    shards = _shards(batch_sharding)
    a = first.reshape(shards, -1, *first.shape[1:])
    b = second.reshape(shards, -1, *second.shape[1:])
    both = jnp.concatenate([a, b], axis=1).reshape(-1, *first.shape[1:])
    return _constrain(both, batch_sharding)


def split_batch(both: jax.Array, batch_sharding: NamedSharding | None = None) -> tuple[jax.Array, jax.Array]:
    """The inverse of :func:`double_batch`: ``[2B, ...]`` -> the two ``[B, ...]`` halves."""
    shards = _shards(batch_sharding)
    parts = both.reshape(shards, 2, -1, *both.shape[1:])
    first = parts[:, 0].reshape(-1, *both.shape[1:])
    second = parts[:, 1].reshape(-1, *both.shape[1:])
    return _constrain(first, batch_sharding), _constrain(second, batch_sharding)


def classifier_free_guidance(
    model: LabelledModelFn,
    class_labels: jax.Array,
    *,
    null_label: int | None,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
    batch_sharding: NamedSharding | None = None,
) -> ModelFn:
    """The ``model_fn(x, t) -> output`` a sampler reads, for a labelled ``model(x, t, labels) -> output``.

    Args:
      model: ``(x [N, H, W, C], t [N], labels int32 [N]) -> output [N, H, W, C]``; with guidance it is called
        once per step on ``N = 2B`` rows (each device's conditional rows, then its unconditional ones), so a
        model that runs in passes (``jaxdiff.execution.passes``) should be built for the doubled batch.
      class_labels: int32 ``[B]``, split over the devices like ``x``.
      null_label: the class id of "no class" (a model trained with label dropout); needed when guided.
      guidance_scale: ``s`` (Python float); 1 is off: ``model(x, t, class_labels)``, one plain call.
      guidance_rescale: ``phi`` in ``[0, 1]`` (Python float), :func:`rescale_noise_cfg`'s mix.
      batch_sharding: the batch's sharding (None: one device); the doubled batch keeps rows on their device.

    Returns:
      ``model_fn(x [B, H, W, C], t [B]) -> float32 [B, H, W, C]``: :func:`combine_cfg` of the two halves.
    """
    scale = check_guidance_scale(guidance_scale)
    rescale = check_guidance_rescale(guidance_rescale)
    if scale == 1:
        return lambda x, t: model(x, t, class_labels)
    if null_label is None:
        raise UserError(f"guidance_scale={scale:g} needs a null_label (a model trained with a null class)")
    null = jnp.full_like(class_labels, null_label)
    labels = double_batch(class_labels, null, batch_sharding)

    def guided(x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        out = model(double_batch(x, x, batch_sharding), double_batch(t, t, batch_sharding), labels)
        cond, uncond = split_batch(out, batch_sharding)
        return combine_cfg(cond, uncond, scale, rescale)

    return guided


# -- loss guidance ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossGuidance:
    """A differentiable loss on the predicted clean image, and how far each step follows its gradient.

    Attributes:
      loss_fn: ``loss_fn(pred_x0, t) -> scalar`` with ``pred_x0`` float32 ``[1, H, W, C]`` in the data range
        (``[-1, 1]``) and ``t`` ``[1]`` the step's timestep (the sampler's ``timesteps`` value). It is
        applied to each image alone (vmapped over the batch, a batch of one each) and the per-image losses
        are summed, so image ``i`` moves by the gradient of its own loss, whatever the batch size, the
        padding or the device count. (A batch-mean loss such as the course's ``color_loss`` thus pulls
        ``B`` times harder here than in the course for a batch of ``B``.)
      scale: the step along the negative gradient, ``x_t <- x_t - scale * grad`` (the course's
        ``guidance_loss_scale``).
    """

    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    scale: float

    def __post_init__(self) -> None:
        if not callable(self.loss_fn):
            raise UserError(f"loss guidance: loss_fn={self.loss_fn!r} is not callable")
        if not _is_number(self.scale):
            raise UserError(f"loss guidance: scale={self.scale!r} is not allowed; use a finite number")

    def total_loss(self, pred_x0: jax.Array, t: jax.Array) -> jax.Array:
        """The sum over the batch of each image's loss: float32 scalar."""
        t = jnp.broadcast_to(jnp.asarray(t), pred_x0.shape[:1])
        per_image = jax.vmap(lambda x0, ti: jnp.asarray(self.loss_fn(x0[None], ti[None]), jnp.float32))
        return jnp.sum(per_image(pred_x0.astype(jnp.float32), t))

    def guide(
        self, x_t: jax.Array, t: jax.Array, predict: Callable[[jax.Array], tuple[jax.Array, Any]]
    ) -> tuple[jax.Array, Any]:
        """One guidance move: ``predict(x_t) -> (pred_x0, aux)`` (the model call and the sampler's x0 rule),
        the gradient of :meth:`total_loss` with respect to ``x_t`` through it, and the moved
        ``x_t - scale * grad``. Returns ``(moved x_t, aux)``, ``aux`` (e.g. the model output) from the
        unmoved ``x_t``."""

        def loss_at(x: jax.Array) -> tuple[jax.Array, Any]:
            pred_x0, aux = predict(x)
            return self.total_loss(pred_x0, t), aux

        grad, aux = jax.grad(loss_at, has_aux=True)(x_t)
        return x_t - self.scale * grad, aux
