"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as ported by pytorch-fid / torch-fidelity) in NNX.

Layout NHWC; input uint8 RGB of any size. What makes it *the* FID network rather than torchvision's
Inception-v3, all reproduced here:

- the input is resized to 299x299 with TensorFlow 1.x's bilinear resize (``align_corners=False``, source
  coordinate ``dst * in / out``, no half-pixel centres), computed in float32 on values 0..255 as
  torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` does; then scaled by ``(x - 128) / 128``;
- BatchNorm epsilon 1e-3; the average pools inside Mixed_5b..5d, 6b..6e and 7b exclude the zero padding
  from the mean (``count_include_pad=False``); Mixed_7c pools its fourth branch with a 3x3 *max* pool;
- pool3: the 2048-d global average of Mixed_7c (FID/KID features); a 1008-way ``fc`` gives the logits
  (IS uses them without the bias, as torch-fidelity's ``logits_unbiased``).

Parameter names mirror the PyTorch state dict (``Mixed_5b.branch1x1.conv`` ...), so ``weights.py`` maps
keys one to one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["INPUT_SIZE", "FIDInceptionV3", "resize_like_tensorflow1x"]

INPUT_SIZE = 299
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on accelerators: features must match the peers


@functools.lru_cache(maxsize=32)
def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and float32 weights of TF1's bilinear resize along one axis."""
    scale = np.float32(in_size / out_size)
    coords = np.arange(out_size, dtype=np.float32) * scale
    low = coords.astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = coords - low.astype(np.float32)
    return low, high, frac


def resize_like_tensorflow1x(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """``[N, H, W, C]`` float32 -> ``[N, size, size, C]``, TF 1.x ``resize_bilinear(align_corners=False)``.

    The same operations in the same order as torch-fidelity's exact ("slow") method: interpolate along the
    width within the two source rows, then along the height.
    """
    _, height, width, _ = images.shape
    if (height, width) == (size, size):
        return images
    y_low, y_high, dy = _resize_taps(height, size)
    x_low, x_high, dx = _resize_taps(width, size)
    rows_low, rows_high = images[:, y_low], images[:, y_high]
    dx = jnp.asarray(dx)[None, None, :, None]
    dy = jnp.asarray(dy)[None, :, None, None]
    in_0 = rows_low[:, :, x_low] + (rows_low[:, :, x_high] - rows_low[:, :, x_low]) * dx
    in_1 = rows_high[:, :, x_low] + (rows_high[:, :, x_high] - rows_high[:, :, x_low]) * dx
    return in_0 + (in_1 - in_0) * dy


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1 average that divides by the number of real (unpadded) pixels."""
    window, strides, padding = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / count


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), padding)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        rngs: nnx.Rngs,
    ):
        pad_h, pad_w = _pair(padding)
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            _pair(kernel_size),
            strides=stride,
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            precision=_HIGHEST,
            kernel_init=nnx.initializers.zeros,  # weights.py loads real values; no random init to pay for
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_channels, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d (35x35): 1x1, 5x5, double 3x3 and pool branches; the pool excludes padding."""

    def __init__(self, in_channels: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: 35x35 -> 17x17 (stride-2 3x3, double 3x3, 3x3 max pool)."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e (17x17): factorised 7x7 branches; the pool excludes padding."""

    def __init__(self, in_channels: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: 17x17 -> 8x8."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / 7c (8x8): split 1x3 / 3x1 branches. ``max_pool`` selects 7c's quirk: a 3x3 max pool
    (TensorFlow's graph) instead of 7b's padding-excluding average pool."""

    def __init__(self, in_channels: int, *, max_pool: bool, rngs: nnx.Rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(in_channels, 192, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3_exclude_pad(x)
        return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
    """The FID Inception-v3. ``__call__(uint8 [N, H, W, 3]) -> {"pool3": [N, 2048], "logits_unbiased":
    [N, 1008], "logits": [N, 1008]}``, all float32."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)
        self.fc = nnx.Linear(2048, 1008, precision=_HIGHEST, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        return self.from_resized(resize_like_tensorflow1x(images.astype(jnp.float32)))

    def from_resized(self, x: jax.Array) -> dict[str, jax.Array]:
        """The outputs for float32 ``[N, 299, 299, 3]`` pixels in 0..255 (already resized)."""
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_3x3(x, 2, 0)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool_3x3(x, 2, 0)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits_unbiased = jnp.matmul(pool3, self.fc.kernel.value, precision=_HIGHEST)
        return {
            "pool3": pool3,
            "logits_unbiased": logits_unbiased,
            "logits": logits_unbiased + self.fc.bias.value,
        }
