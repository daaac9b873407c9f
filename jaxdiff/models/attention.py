"""Spatial self-attention of the DDPM UNet (diffusers ``Attention`` as built by
``AttnDownBlock2D`` / ``AttnUpBlock2D`` / ``UNetMidBlock2D``), NHWC, through
``jaxdiff.execution.ops.dot_product_attention`` (the platform's best kernel)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.execution.ops import dot_product_attention
from jaxdiff.models.layers import Dtype, group_norm, linear


class Attention(nnx.Module):
    """Residual multi-head self-attention over the pixels of ``[B, H, W, C]``.

    ``group_norm`` (optional) -> ``to_q`` / ``to_k`` / ``to_v`` -> attention -> ``to_out[0]``, plus
    the input, divided by ``rescale_output_factor``. ``heads * dim_head`` may differ from ``C``
    (diffusers uses ``heads = C // attention_head_dim``).
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        dim_head: int,
        norm_num_groups: int | None,
        eps: float,
        rescale_output_factor: float = 1.0,
        norm_key: str = "norm_num_groups",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        inner = heads * dim_head
        self.group_norm = (
            group_norm(channels, norm_num_groups, eps, key=norm_key, **kw)
            if norm_num_groups is not None
            else None
        )
        self.to_q = linear(channels, inner, **kw)
        self.to_k = linear(channels, inner, **kw)
        self.to_v = linear(channels, inner, **kw)
        self.to_out = nnx.List([linear(inner, channels, **kw)])  # diffusers' to_out[1] is a no-op dropout
        self.heads = heads
        self.dim_head = dim_head
        self.rescale_output_factor = rescale_output_factor

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = self.group_norm(x) if self.group_norm is not None else x
        y = y.reshape(b, h * w, c)
        split = (b, h * w, self.heads, self.dim_head)
        q = self.to_q(y).reshape(split)
        k = self.to_k(y).reshape(split)
        v = self.to_v(y).reshape(split)
        o = dot_product_attention(q, k, v).reshape(b, h * w, self.heads * self.dim_head)
        out = self.to_out[0](o).reshape(b, h, w, c) + x
        if self.rescale_output_factor != 1:
            out = out / self.rescale_output_factor
        return out
