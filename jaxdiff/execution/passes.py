"""Running a large batch in passes of fewer images: the same results, a smaller working set.

A UNet's largest activations are those of its first level (``H x W x width`` floats per image). On a CPU,
once they outgrow the caches for the batch at hand, running the batch in passes is faster than in one
go (measurements in ``benchmarks/RESULTS.md``). Each image's output does not depend on the others', so
only float rounding tells the two apart; the train step averages the passes' gradients (the same update).

One rule serves training and sampling (:func:`pass_size`): a positive requested size is used as given
(it must divide the per-device batch); 0 is automatic: on a CPU, when the first level's float32
activations of the per-device batch exceed the caller's ``split_above`` (``TRAIN_SPLIT_ABOVE`` for a train
step, whose backward pass keeps them, ``SAMPLE_SPLIT_ABOVE`` for sampling), the largest divisor of the
batch, at least ``MIN_PASS_SIZE`` images, whose activations fit ``PASS_MAX_BYTES``; else one pass.

One layout serves both (:func:`pass_view`): pass ``k`` takes rows ``k * c .. (k + 1) * c`` of every
device's slice of the batch, so no row leaves its device. The train step takes one pass at a time
(:func:`take_pass`, an unrolled loop); sampling maps over all of them (:func:`in_passes`, a ``lax.map``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff.errors import UserError

__all__ = [
    "CPU_PASS_MAX_BYTES",
    "MIN_PASS_SIZE",
    "PASS_MAX_BYTES",
    "SAMPLE_SPLIT_ABOVE",
    "TRAIN_SPLIT_ABOVE",
    "first_level_width",
    "in_passes",
    "in_passes_for_batch",
    "pass_size",
    "pass_view",
    "take_pass",
]

# The first level's float32 activations of one pass at most this large...
PASS_MAX_BYTES = 4 * 2**20
CPU_PASS_MAX_BYTES = PASS_MAX_BYTES  # (the name sampling used)
# ...never fewer images per pass than this (many tiny passes lose more than the caches give back)...
MIN_PASS_SIZE = 8
# ...and a batch is split only once its activations exceed these (a train step keeps them for its
# backward pass, which moves its break-even point).
TRAIN_SPLIT_ABOVE = 8 * 2**20
SAMPLE_SPLIT_ABOVE = 4 * 2**20


def first_level_width(params: Mapping[str, Any] | Any) -> int | None:
    """Channels of a jaxdiff UNet's first level, read from its parameters: ``conv_in`` (``UNet2D``) or the
    first of ``down_layers`` (``BasicUNet``); None for another tree."""
    try:
        if "conv_in" in params:
            return int(params["conv_in"]["kernel"].shape[-1])
        if "down_layers" in params:
            return int(params["down_layers"][0]["kernel"].shape[-1])
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def pass_size(
    requested: int,
    per_device_batch: int,
    *,
    image_hw: tuple[int, int],
    width: int | None,
    platform: str,
    split_above: int = SAMPLE_SPLIT_ABOVE,
    key: str = "microbatch_size",
    context: str = "",
) -> int:
    """Images per device per pass for ``per_device_batch`` images (see the module docstring).

    Args:
      requested: > 0: used as given, and it must divide ``per_device_batch`` (``UserError`` naming ``key``
        otherwise); 0: automatic.
      per_device_batch: the images each device holds.
      image_hw, width: the first level's height, width and channels (None: unknown, one pass).
      platform: the devices' platform (``"cpu"``, ``"gpu"``, ...); only a CPU gets automatic passes.
      split_above: bytes of first-level float32 activations of the per-device batch above which it is split.
      key, context: how the error message names the setting and the batch.
    """
    if requested < 0:
        raise UserError(f"{key}={requested} must be 0 (automatic) or a positive integer")
    if requested:
        if per_device_batch % requested:
            raise UserError(
                f"{key}={requested} must divide the per-device batch {per_device_batch}{context}, "
                "or be 0 (automatic)"
            )
        return requested
    if platform != "cpu" or width is None:
        return per_device_batch
    per_image = image_hw[0] * image_hw[1] * width * 4
    if per_device_batch * per_image <= split_above:
        return per_device_batch
    fits = [d for d in range(MIN_PASS_SIZE, per_device_batch) if per_device_batch % d == 0]
    fits = [d for d in fits if d * per_image <= PASS_MAX_BYTES]
    return max(fits) if fits else per_device_batch


def pass_view(a: jax.Array, passes: int, shards: int) -> jax.Array:
    """``[B, ...]`` -> ``[shards, passes, B / (shards * passes), ...]``: the batch as each device's rows in
    ``passes`` equal parts (a reshape: device ``d``'s rows stay in ``[d]``)."""
    return a.reshape(shards, passes, -1, *a.shape[1:])


def _constrain(a: jax.Array, batch_sharding: NamedSharding | None, leading: tuple[None, ...]) -> jax.Array:
    if batch_sharding is None:
        return a
    spec = PartitionSpec(*leading, *batch_sharding.spec)
    return jax.lax.with_sharding_constraint(a, NamedSharding(batch_sharding.mesh, spec))


def _shards(batch_sharding: NamedSharding | None) -> int:
    return 1 if batch_sharding is None else batch_sharding.mesh.devices.size


def take_pass(tree: Any, k: int, passes: int, batch_sharding: NamedSharding | None) -> Any:
    """Pass ``k`` of every leaf ``[B, ...]`` of ``tree``: ``[B / passes, ...]``, still split over devices."""
    shards = _shards(batch_sharding)

    def one(x: jax.Array) -> jax.Array:
        part = pass_view(x, passes, shards)[:, k]
        return _constrain(part.reshape(-1, *x.shape[1:]), batch_sharding, ())

    return jax.tree.map(one, tree)


def in_passes(
    apply_fn: Callable[..., jax.Array], passes: int, batch_sharding: NamedSharding | None = None
) -> Callable[..., jax.Array]:
    """``apply_fn(params, x, t, class_labels=None)`` evaluated in ``passes`` passes over each device's rows.

    ``x`` ``[B, H, W, C]``, ``t`` ``[B]`` (or a scalar), ``class_labels`` ``[B]`` or None; ``passes`` must
    divide each device's ``B / num_devices`` rows. ``batch_sharding``: the batch's sharding (its first
    dimension split over the devices; None: one device). Returns ``apply_fn``'s ``[B, ...]`` output.
    """
    if passes == 1:
        return apply_fn
    shards = _shards(batch_sharding)

    def split(a: jax.Array) -> jax.Array:
        """``[B, ...]`` -> ``[passes, B / passes, ...]``: pass k holds part k of every device's rows."""
        a = pass_view(a, passes, shards).swapaxes(0, 1)
        return _constrain(a.reshape(passes, -1, *a.shape[3:]), batch_sharding, (None,))

    def merge(a: jax.Array) -> jax.Array:
        a = a.reshape(passes, shards, -1, *a.shape[2:]).swapaxes(0, 1)
        return _constrain(a.reshape(-1, *a.shape[3:]), batch_sharding, ())

    def run(params: Any, x: jax.Array, t: jax.Array, class_labels: jax.Array | None = None) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        parts = (split(x), split(t), None if class_labels is None else split(class_labels))
        out = jax.lax.map(lambda p: apply_fn(params, *p), parts)
        return merge(out)

    return run


def in_passes_for_batch(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    batch_shape: tuple[int, ...],
    *,
    microbatch_size: int = 0,
    batch_sharding: NamedSharding | None = None,
) -> Callable[..., jax.Array]:
    """:func:`in_passes` with the passes :func:`pass_size` picks (for sampling) for ``params``' model and a
    global batch of ``batch_shape`` ``[B, H, W, C]`` split over ``batch_sharding``'s devices (None: one
    device of JAX's default backend). ``microbatch_size``: as ``pass_size``'s ``requested``."""
    if batch_sharding is None:
        devices, platform = 1, jax.default_backend()
    else:
        devices, platform = batch_sharding.mesh.devices.size, batch_sharding.mesh.devices.flat[0].platform
    per_device = batch_shape[0] // devices
    width = first_level_width(params)
    size = pass_size(microbatch_size, per_device, image_hw=batch_shape[1:3], width=width, platform=platform)
    return in_passes(apply_fn, per_device // size, batch_sharding)
