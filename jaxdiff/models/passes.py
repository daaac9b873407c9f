"""Evaluating a model on a large batch in passes of fewer images: the same outputs, a smaller working set.

A UNet's largest activations are those of its first level (``H x W x block_out_channels[0]`` floats per
image). On a CPU, once they outgrow the caches for the batch at hand, evaluating the batch in passes is
faster than in one go (2-core EPYC, in-process: the course UNet's DDIM sampling at batch 64 1.11x faster
in passes of 16, the digits UNet's at batch 200 1.12-1.2x in passes of 100 or 40; the digits UNet at
batch 64, 2 MiB, and the course UNet at batch 16, 4 MiB, were fastest in one pass; see
``benchmarks/RESULTS.md``). Each image's output does not depend on the others', so only float rounding
can tell the two apart.

- :func:`pass_size` picks the images per device per pass (0 = this rule; a positive size is checked).
- :func:`in_passes_for_batch` does both for a model's parameters and a batch shape.
- :func:`in_passes` wraps an ``apply_fn(params, x, t, class_labels=None)`` so that it runs each device's
  rows of the batch in passes, one ``lax.map`` iteration per pass (a map compiled faster than an unrolled
  loop and ran as fast here).
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
    "first_level_width",
    "in_passes",
    "in_passes_for_batch",
    "pass_size",
]

# Automatic passes on a CPU: the first level's float32 activation of one pass at most this large...
CPU_PASS_MAX_BYTES = 4 * 2**20
# ...and never fewer images per pass than this (many tiny passes lose more than the caches give back).
MIN_PASS_SIZE = 8


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
    key: str = "microbatch_size",
) -> int:
    """Images per device per pass for evaluating ``per_device_batch`` images.

    ``requested`` > 0 is used as given and must divide ``per_device_batch`` (``UserError`` naming ``key``
    otherwise). 0 is automatic: on a CPU whose first-level float32 activation of the whole per-device batch
    (``H * W * width * 4`` bytes per image) exceeds ``CPU_PASS_MAX_BYTES``, the largest divisor of the
    batch that fits, if it is at least ``MIN_PASS_SIZE``; else (and on every other platform) one pass.
    """
    if requested < 0:
        raise UserError(f"{key}={requested} must be 0 (automatic) or a positive integer")
    if requested:
        if per_device_batch % requested:
            raise UserError(
                f"{key}={requested} must divide the per-device batch {per_device_batch}, or be 0 (automatic)"
            )
        return requested
    if platform != "cpu" or width is None:
        return per_device_batch
    per_image = image_hw[0] * image_hw[1] * width * 4
    if per_device_batch * per_image <= CPU_PASS_MAX_BYTES:
        return per_device_batch
    fits = [d for d in range(MIN_PASS_SIZE, per_device_batch) if per_device_batch % d == 0]
    fits = [d for d in fits if d * per_image <= CPU_PASS_MAX_BYTES]
    return max(fits) if fits else per_device_batch


def in_passes(
    apply_fn: Callable[..., jax.Array], passes: int, batch_sharding: NamedSharding | None = None
) -> Callable[..., jax.Array]:
    """``apply_fn(params, x, t, class_labels=None)`` evaluated in ``passes`` passes over each device's rows.

    ``x`` ``[B, H, W, C]``, ``t`` ``[B]`` (or a scalar), ``class_labels`` ``[B]`` or None; ``passes`` must
    divide each device's ``B / num_devices`` rows. ``batch_sharding`` is the batch's sharding (its first
    dimension split over the devices; None: one device): pass ``k`` takes rows ``k * c .. (k + 1) * c`` of
    every device's slice, so no row leaves its device. Returns ``apply_fn``'s ``[B, ...]`` output.
    """
    if passes == 1:
        return apply_fn
    shards = 1 if batch_sharding is None else batch_sharding.mesh.devices.size

    def constrain(a: jax.Array, leading: tuple[None, ...]) -> jax.Array:
        if batch_sharding is None:
            return a
        spec = PartitionSpec(*leading, *batch_sharding.spec)
        return jax.lax.with_sharding_constraint(a, NamedSharding(batch_sharding.mesh, spec))

    def split(a: jax.Array) -> jax.Array:
        """``[B, ...]`` -> ``[passes, B / passes, ...]``: pass k holds slice k of every device's rows."""
        a = a.reshape(shards, passes, -1, *a.shape[1:]).swapaxes(0, 1)
        return constrain(a.reshape(passes, -1, *a.shape[3:]), (None,))

    def merge(a: jax.Array) -> jax.Array:
        a = a.reshape(passes, shards, -1, *a.shape[2:]).swapaxes(0, 1)
        return constrain(a.reshape(-1, *a.shape[3:]), ())

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
    """:func:`in_passes` with the passes :func:`pass_size` picks for ``params``' model and a global batch
    of ``batch_shape`` ``[B, H, W, C]``, split over ``batch_sharding``'s devices (None: one device, of
    JAX's default backend). ``microbatch_size``: as ``pass_size``'s ``requested``."""
    if batch_sharding is None:
        devices, platform = 1, jax.default_backend()
    else:
        devices, platform = batch_sharding.mesh.devices.size, batch_sharding.mesh.devices.flat[0].platform
    per_device = batch_shape[0] // devices
    width = first_level_width(params)
    size = pass_size(microbatch_size, per_device, image_hw=batch_shape[1:3], width=width, platform=platform)
    return in_passes(apply_fn, per_device // size, batch_sharding)
