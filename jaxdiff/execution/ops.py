"""The operations whose best implementation depends on the platform, as the models ask for them.

- :func:`conv_general_dilated`: ``lax.conv_general_dilated``'s signature; an eligible float32 3x3
  stride-1 convolution is evaluated by Winograd F(2x2, 3x3) on a CPU (:mod:`.winograd`; gradients and
  other platforms keep XLA's convolution), unless ``JAXDIFF_NO_WINOGRAD=1`` when the model is built.
- :func:`dot_product_attention`: ``jax.nn.dot_product_attention`` through cuDNN's fused kernel on a CUDA
  GPU for half-precision inputs where its shape checks pass, else XLA's (``JAXDIFF_ATTENTION=xla`` or
  ``cudnn`` forces one).
- :func:`groups_to_channels`: ``[B, G]`` per-group values spread to ``[B, 1, 1, C]`` channels; on a CPU
  as a product with a 0/1 matrix, which XLA materialises once instead of recomputing the per-group
  arithmetic for every pixel of the consumer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff.execution import winograd

__all__ = ["conv_general_dilated", "convolution_for_new_model", "dot_product_attention", "groups_to_channels"]

conv_general_dilated = winograd.conv_general_dilated


def convolution_for_new_model() -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` a model built now uses (read once per model: the opt-out is an
    environment variable read at build time, never inside a traced function)."""
    return winograd.conv_general_dilated if winograd.enabled() else lax.conv_general_dilated


def groups_to_channels(per_group: jax.Array, group_size: int) -> jax.Array:
    """``[B, G]`` -> ``[B, 1, 1, G * group_size]``: each group's value repeated over its channels (exact)."""

    def by_matmul(v: jax.Array) -> jax.Array:
        expand = jnp.repeat(jnp.eye(v.shape[-1], dtype=v.dtype), group_size, axis=1)  # [G, C]
        return jnp.dot(v, expand, precision=lax.Precision.HIGHEST)

    def by_repeat(v: jax.Array) -> jax.Array:
        return jnp.repeat(v, group_size, axis=-1)

    return lax.platform_dependent(per_group, cpu=by_matmul, default=by_repeat)[:, None, None, :]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention over ``[B, L, heads, head_dim]`` arrays, scaled by ``head_dim ** -0.5``.

    On a CUDA GPU with half-precision inputs, cuDNN's fused (flash) kernel is tried first; its shape
    checks run while tracing, so an unsupported shape falls back to XLA's implementation, which is also
    what CPUs and TPUs get (XLA accumulates the logits and softmax in float32).
    """
    forced = os.environ.get("JAXDIFF_ATTENTION", "").lower()
    if forced in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=forced)
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError, TypeError):
            pass
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
