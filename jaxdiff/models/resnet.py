"""The time-conditioned residual block of the DDPM UNet (diffusers ``ResnetBlock2D``), NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.layers import (
    ACTIVATIONS,
    Dtype,
    avg_pool_2x,
    conv2d,
    conv_of_upsampled,
    group_norm,
    linear,
    upsample_nearest_2x,
)


class ResnetBlock2D(nnx.Module):
    """``x + conv2(drop(act(norm2(conv1(act(norm1(x))) (+) temb))))`` divided by ``output_scale_factor``.

    The timestep embedding enters after ``conv1``: added (``time_embedding_norm="default"``) before
    ``norm2``, or as ``norm2(h) * (1 + scale) + shift`` (``"scale_shift"``). A 1x1 ``conv_shortcut``
    matches channel counts. ``up`` / ``down`` resample both paths by 2 (nearest / average pooling)
    right after the first activation, as diffusers' resampling resnets do.

    Shapes: ``x`` ``[B, H, W, in_channels]``, ``temb`` ``[B, temb_channels]`` ->
    ``[B, H', W', out_channels]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        time_embedding_norm: str = "default",
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
        up: bool = False,
        down: bool = False,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = group_norm(in_channels, groups, eps, **kw)
        self.conv1 = conv2d(in_channels, out_channels, 3, padding=1, **kw)
        temb_out = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
        self.time_emb_proj = linear(temb_channels, temb_out, **kw)
        self.norm2 = group_norm(out_channels, groups, eps, **kw)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1, **kw)
        self.conv_shortcut = (
            conv2d(in_channels, out_channels, 1, padding=0, **kw) if in_channels != out_channels else None
        )
        self.act = ACTIVATIONS[act_fn]
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.up = up
        self.down = down

    def __call__(self, x: jax.Array, temb: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.act(self.norm1(x))
        if self.up:
            x, h = upsample_nearest_2x(x), conv_of_upsampled(self.conv1, h)
        elif self.down:
            x, h = avg_pool_2x(x), self.conv1(avg_pool_2x(h))
        else:
            h = self.conv1(h)
        t = self.time_emb_proj(self.act(temb))[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(t, 2, axis=-1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.dropout(self.act(h), deterministic=rngs is None, rngs=rngs)
        h = self.conv2(h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1:
            out = out / self.output_scale_factor
        return out
