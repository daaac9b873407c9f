"""Timestep embeddings: sinusoidal (DDPM), Gaussian Fourier features (score SDE), and the MLP
that lifts either to the UNet's conditioning width. Projections are computed in float32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.layers import Dtype, linear, normal_init


def sinusoidal_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """DDPM's sinusoidal embedding of ``timesteps`` ``[B]`` (int or float) -> float32 ``[B, dim]``.

    Frequencies are ``exp(-log(max_period) * i / (dim // 2 - freq_shift))``; the first half is
    sin and the second cos (swapped when ``flip_sin_to_cos``); an odd ``dim`` gets a zero column.
    Same formula as diffusers' ``get_timestep_embedding``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    args = scale * args
    first, second = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (jnp.sin(args), jnp.cos(args))
    emb = jnp.concatenate([first, second], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class Timesteps(nnx.Module):
    """Parameter-free sinusoidal projection (diffusers ``Timesteps``)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        return sinusoidal_embedding(
            timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )


class GaussianFourierProjection(nnx.Module):
    """Random Fourier features of ``log(t)`` (diffusers ``GaussianFourierProjection``, log=True).

    ``weight`` ``[embedding_size]`` is drawn once from N(0, scale^2) and never trained (diffusers
    sets ``requires_grad=False``); it is a ``Param`` so it travels with the weights, and the forward
    pass stops its gradient. Output float32 ``[B, 2 * embedding_size]``: sin then cos.
    """

    def __init__(self, embedding_size: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        self.weight = nnx.Param(normal_init(scale)(rngs.params(), (embedding_size,), jnp.float32))

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        w = jax.lax.stop_gradient(self.weight[...]).astype(jnp.float32)
        proj = jnp.log(timesteps.astype(jnp.float32))[:, None] * w[None, :] * 2 * math.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Embedding(nnx.Module):
    """A lookup table ``weight`` ``[num_embeddings, dim]`` (``torch.nn.Embedding``, N(0, 1) init).

    Used for class labels and for ``time_embedding_type="learned"``; ids ``[B]`` -> ``[B, dim]``
    in the parameter dtype.
    """

    def __init__(self, num_embeddings: int, dim: int, *, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.weight = nnx.Param(normal_init(1.0)(rngs.params(), (num_embeddings, dim), param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids.astype(jnp.int32), axis=0)


class TimestepEmbedding(nnx.Module):
    """``linear_1 -> SiLU -> linear_2`` (diffusers ``TimestepEmbedding``); ``[B, in] -> [B, dim]``."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.linear_1 = linear(in_channels, time_embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_2 = linear(
            time_embed_dim, time_embed_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(x)))
