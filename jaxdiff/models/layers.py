"""Small building blocks shared by the UNets: PyTorch-style init, conv / linear / group-norm
factories, activations, and the 2x resampling layers (NHWC throughout).

Initialisation follows PyTorch's defaults (uniform in +-1/sqrt(fan_in) for weights and biases),
so a jaxdiff model trained from scratch starts where the same diffusers model would.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxdiff.errors import UserError
from jaxdiff.execution import ops

Dtype = jnp.dtype | type
Activation = Callable[[jax.Array], jax.Array]


def _host_rng(key: jax.Array) -> np.random.Generator:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(data).ravel())


def _initializer(draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray], traced: Callable):
    """An initializer that draws on the host with numpy when the key is concrete.

    Eager ``jax.random`` compiles one XLA program per parameter shape (seconds for a UNet on a
    CPU); numpy seeded from the key's bits is instant. Under ``jit`` / ``eval_shape`` (a traced
    key, e.g. for sharded initialisation) ``traced`` (jax.random) is used instead.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if isinstance(key, jax.core.Tracer):
            return traced(key, shape, dtype)
        return jnp.asarray(draw(_host_rng(key), shape).astype(dtype))

    return init


def uniform_init(bound: float) -> jax.nn.initializers.Initializer:
    """U(-bound, bound)."""
    return _initializer(
        lambda rng, shape: rng.uniform(-bound, bound, size=shape),
        lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound),
    )


def normal_init(stddev: float = 1.0) -> jax.nn.initializers.Initializer:
    """N(0, stddev^2)."""
    return _initializer(
        lambda rng, shape: stddev * rng.standard_normal(size=shape),
        lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype),
    )


def constant_init(value: float) -> jax.nn.initializers.Initializer:
    return _initializer(
        lambda rng, shape: np.full(shape, value), lambda key, shape, dtype: jnp.full(shape, value, dtype)
    )


def torch_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """PyTorch's default ``Conv2d`` / ``Linear`` weight init, U(+-1/sqrt(fan_in)) (kaiming_uniform with
    a=sqrt(5)), for an HWIO or ``[in, out]`` kernel: fan_in is every axis but the last."""
    return uniform_init(1.0 / math.sqrt(math.prod(shape[:-1])))(key, shape, dtype)


def torch_bias_init(fan_in: int) -> jax.nn.initializers.Initializer:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs."""
    return uniform_init(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int | tuple[tuple[int, int], tuple[int, int]] = 1,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An NHWC convolution laid out like ``torch.nn.Conv2d`` (explicit symmetric padding by default).

    The convolution itself is the platform's choice (``jaxdiff.execution.ops``: Winograd for evaluating
    3x3 convolutions on a CPU, same parameters and results up to float rounding).
    """
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    conv_fn = ops.convolution_for_new_model()
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels * kernel_size * kernel_size),
        conv_general_dilated=conv_fn,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A dense layer initialised like ``torch.nn.Linear`` (kernel ``[in, out]``)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


def _group_sums(per_channel: jax.Array, num_groups: int) -> jax.Array:
    """``[B, C]`` per-channel sums -> ``[B, G]`` per-group sums (channels of a group are contiguous)."""
    b, c = per_channel.shape
    return per_channel.reshape(b, num_groups, c // num_groups).sum(-1)


def _group_norm_fwd(x, scale, bias, num_groups, eps):
    b, h, w, c = x.shape
    k = c // num_groups
    n = h * w * k
    xf = x.astype(jnp.float32)
    # Sums over H, W per channel first (a plain reduction of the NHWC array), then over the few
    # channels of each group on the small [B, C] result: much faster on a CPU than reducing the
    # [B, H, W, G, C/G] view in one go. One pass: var = E[x^2] - E[x]^2 in float32.
    mean = _group_sums(xf.sum(axis=(1, 2)), num_groups) / n
    mean_sq = _group_sums(jnp.square(xf).sum(axis=(1, 2)), num_groups) / n
    rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + eps)  # [B, G]
    scale_f, bias_f = scale.astype(jnp.float32), bias.astype(jnp.float32)
    # y = (x - mean) * rstd * scale + bias, folded into one multiply-add per element.
    mul = ops.groups_to_channels(rstd, k) * scale_f
    add = bias_f - ops.groups_to_channels(mean * rstd, k) * scale_f
    return xf * mul + add, (x, scale, bias, mean, rstd)


def _group_norm_bwd(num_groups, eps, res, dy):
    x, scale, bias, mean, rstd = res
    b, h, w, c = x.shape
    k = c // num_groups
    n = h * w * k
    xf, dy, scale_f = x.astype(jnp.float32), dy.astype(jnp.float32), scale.astype(jnp.float32)
    mean_c, rstd_c = (
        ops.groups_to_channels(mean, k)[:, 0, 0],
        ops.groups_to_channels(rstd, k)[:, 0, 0],
    )  # [B, C]
    # One reduction pass over (dy, x): per-channel sums of dy and dy * x.
    sum_dy = dy.sum(axis=(1, 2))
    sum_dy_xhat = (jnp.sum(dy * xf, axis=(1, 2)) - mean_c * sum_dy) * rstd_c  # sum of dy * x_hat
    # With g = dy * scale (the gradient at x_hat): dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),
    # means over each group; folded into dx = dy * p + x * q + r with per-(batch, channel) p, q, r.
    mean_g = ops.groups_to_channels(_group_sums(sum_dy * scale_f, num_groups) / n, k)[:, 0, 0]
    mean_g_xhat = ops.groups_to_channels(_group_sums(sum_dy_xhat * scale_f, num_groups) / n, k)[:, 0, 0]
    p = rstd_c * scale_f
    q = -rstd_c * rstd_c * mean_g_xhat
    r = rstd_c * (mean_c * rstd_c * mean_g_xhat - mean_g)
    dx = dy * p[:, None, None, :] + xf * q[:, None, None, :] + r[:, None, None, :]
    return (
        dx.astype(x.dtype),
        sum_dy_xhat.sum(0).astype(scale.dtype),
        sum_dy.sum(0).astype(bias.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_nhwc(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float
) -> jax.Array:
    """``torch.nn.GroupNorm`` of ``[B, H, W, C]`` (groups of ``C / num_groups`` adjacent channels).

    Statistics and the result are float32 whatever ``x``'s dtype; ``scale``, ``bias``: ``[C]``.
    The gradient is written out (two per-channel sums and one fused pass) rather than left to
    autodiff, which on a CPU halves the cost of a group norm's backward pass.
    """
    return _group_norm_fwd(x, scale, bias, num_groups, eps)[0]


group_norm_nhwc.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` (same parameters ``scale`` / ``bias``, same results) computed by
    :func:`group_norm_nhwc` for NHWC inputs; other inputs take flax's path."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or x.ndim != 4 or self.scale is None or self.bias is None:
            return super().__call__(x, mask=mask)
        if self.reduction_axes is not None or self.axis_name is not None:
            return super().__call__(x, mask=mask)
        scale, bias = self.scale[...], self.bias[...]
        y = group_norm_nhwc(x, scale, bias, self.num_groups, self.epsilon)
        return y.astype(self.dtype or jnp.result_type(x, scale, bias))


def group_norm(
    num_channels: int,
    num_groups: int,
    eps: float,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
    key: str = "norm_num_groups",
) -> GroupNorm:
    """``torch.nn.GroupNorm`` over the last (channel) axis; statistics are always float32.

    Mean and mean square come from one pass over the data (``E[x^2] - E[x]^2`` in float32, within
    1e-6 of PyTorch on the parity tests); see :func:`group_norm_nhwc`. ``key`` names the config key
    blamed for a bad group count.
    """
    if num_channels % num_groups:
        raise UserError(
            f"model config {key}={num_groups} does not divide {num_channels} channels; "
            "every channel count in the network must be a multiple of it"
        )
    return GroupNorm(
        num_channels,
        num_groups=num_groups,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=True,  # (flax's default; the fallback path)
        scale_init=constant_init(1.0),
        bias_init=constant_init(0.0),
        rngs=rngs,
    )


def mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


def exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU() default is the erf form


ACTIVATIONS: dict[str, Activation] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": mish,
    "gelu": exact_gelu,
    "relu": jax.nn.relu,
}


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of ``[B, H, W, C]`` -> ``[B, 2H, 2W, C]`` (one broadcast)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def avg_pool_2x(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 (``torch.nn.AvgPool2d(2)``; odd edges are dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def max_pool_2x(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (``torch.nn.MaxPool2d(2)``; odd edges are dropped)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Downsample2D(nnx.Module):
    """Stride-2 3x3 convolution (diffusers ``Downsample2D(use_conv=True, name="op")``).

    ``padding=0`` pads one row / column at the bottom / right only, as diffusers does.
    """

    def __init__(
        self,
        channels: int,
        *,
        padding: int = 1,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        pads = ((0, 1), (0, 1)) if padding == 0 else ((padding, padding), (padding, padding))
        self.conv = conv2d(
            channels, channels, 3, stride=2, padding=pads, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest 2x upsampling then a 3x3 convolution (diffusers ``Upsample2D(use_conv=True)``)."""

    def __init__(
        self, channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        self.conv = conv2d(channels, channels, 3, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv_of_upsampled(self.conv, x)


def conv_of_upsampled(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(upsample_nearest_2x(x))`` for a 3x3, padding-1 ``conv`` from :func:`conv2d`, by
    :func:`upsample_nearest_2x_conv3x3` (the upsampled image is never made)."""
    kernel = conv.kernel[...]
    y = upsample_nearest_2x_conv3x3(x.astype(conv.dtype or jnp.result_type(x, kernel)), kernel)
    return y + conv.bias[...].astype(y.dtype) if conv.bias is not None else y


def _pair_taps(k: jax.Array, phase: int, axis: int) -> jax.Array:
    """The 2 taps along ``axis`` that a 3-tap kernel becomes over a nearest-2x-upsampled axis: output
    phase 0 reads low-resolution positions (i-1, i) with taps (k0, k1 + k2), phase 1 reads (i, i+1)
    with (k0 + k1, k2)."""
    k0, k1, k2 = (lax.index_in_dim(k, i, axis, keepdims=False) for i in range(3))
    return jnp.stack([k0, k1 + k2] if phase == 0 else [k0 + k1, k2], axis=axis)


def upsample_nearest_2x_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv3x3(upsample_nearest_2x(x))`` with padding 1, without the upsampled image: ``[B, H, W, C]``,
    HWIO ``[3, 3, C, D]`` -> ``[B, 2H, 2W, D]``.

    Each of the four output phases (even / odd row x even / odd column) is a 2x2 convolution of ``x``
    with taps summed from the 3x3 kernel (:func:`_pair_taps`): 16 multiplies per 2x2 block of output
    pixels instead of 36, the same sums up to float rounding. Taps are summed in the kernel's dtype.
    """
    pads = ((1, 0), (0, 1))  # phase 0 reads (i-1, i), phase 1 reads (i, i+1)
    rows = []
    for a in range(2):
        cols = []
        for b in range(2):
            k = _pair_taps(_pair_taps(kernel, a, 0), b, 1).astype(x.dtype)
            cols.append(
                lax.conv_general_dilated(
                    x, k, (1, 1), (pads[a], pads[b]), dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (column phase), D]
    y = jnp.stack(rows, axis=2)  # [B, H, 2 (row phase), W, 2, D]
    b_, h, _, w, _, d = y.shape
    return y.reshape(b_, 2 * h, 2 * w, d)
