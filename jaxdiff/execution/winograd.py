"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3): the UNet's inference convolution on a CPU.

XLA's CPU convolution (Eigen's packing around small GEMM kernels) reaches a lower FLOP rate than
PyTorch's oneDNN kernels (``benchmarks/RESULTS.md``), and the 3x3 convolutions are most of a UNet's
time. Winograd's algorithm (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural Networks",
section 4) computes each 2x2 output tile from a 4x4 input tile with 16 multiplies per (input, output)
channel pair instead of 36: the work becomes 16 independent matrix products
``[tiles, C_in] @ [C_in, C_out]`` between two cheap elementwise transforms,

    Y = A^T [ (G g G^T) * (B^T d B) ] A      per tile, "*" elementwise over the 4x4 positions,

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Every constant is exact in binary floating point and F(2x2, 3x3)'s rounding error is of the order of a
direct convolution's (the tests bound both against a float64 reference). (F(4x4, 3x3) saves more
multiplies but loses ~4 bits and was no faster in the whole UNet here.)

Where it is used (:func:`conv_general_dilated`): float32, a 3x3 kernel, stride 1, padding 1 on each
side, no dilation, one feature group, NHWC input / HWIO kernel, even height and width with H * W of at
least 64 pixels, as in 8x8 (below that the transforms cost more than the multiplies they save), and the CPU
(``lax.platform_dependent``; other platforms keep XLA's convolution).

Only evaluation takes this path. Differentiating it (``jax.grad``, ``jax.jvp``) goes through XLA's own
convolution and its gradients (a ``custom_jvp``): in the whole training step the transforms' extra
memory traffic cancelled the saving on this machine (``benchmarks/RESULTS.md``), so training computes
exactly what it computed before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff.execution.xla_flags import opted_out

__all__ = [
    "MIN_PIXELS",
    "OPT_OUT_ENV",
    "conv_general_dilated",
    "enabled",
    "filter_transform",
    "input_transform",
    "is_eligible",
    "output_transform",
    "winograd_conv3x3",
]

OPT_OUT_ENV = "JAXDIFF_NO_WINOGRAD"
MIN_PIXELS = 64  # 8x8; below it XLA's convolution was faster (benchmarks/RESULTS.md)

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def enabled() -> bool:
    """Whether models built now use Winograd convolutions on a CPU (``JAXDIFF_NO_WINOGRAD=1``: no)."""
    return not opted_out(OPT_OUT_ENV)


def _combine(matrix: Sequence[Sequence[float]], xs: Sequence[jax.Array], axis: int) -> jax.Array:
    """``matrix @ xs`` stacked on ``axis``, each row as adds of its non-zero terms (sparse matrices)."""
    rows = []
    for row in matrix:
        terms = [x if c == 1 else -x if c == -1 else x * c for c, x in zip(row, xs, strict=True) if c != 0]
        rows.append(functools.reduce(jnp.add, terms))
    return jnp.stack(rows, axis=axis)


def input_transform(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` -> ``[16, B * H/2 * W/2, C]``: B^T d B of every 4x4 tile (stride 2) of ``x``
    zero-padded by one pixel; the leading axis runs over the 16 tile positions, row-major."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Rows, then columns: two stacks of 4 terms, which XLA fuses into one loop each (a single stack of 16
    # terms it splits into 16 loops and a copy).
    rows = _combine(_BT, [lax.slice_in_dim(xp, u, u + h - 1, 2, axis=1) for u in range(4)], 0)
    tiles = _combine(_BT, [lax.slice_in_dim(rows, v, v + w - 1, 2, axis=3) for v in range(4)], 1)
    return tiles.reshape(16, b * (h // 2) * (w // 2), c)


def filter_transform(kernel: jax.Array) -> jax.Array:
    """HWIO ``[3, 3, C_in, C_out]`` -> ``[16, C_in, C_out]``: G g G^T for every channel pair."""
    rows = _combine(_G, [kernel[0], kernel[1], kernel[2]], 0)  # [4, 3, C_in, C_out]
    return _combine(_G, [rows[:, 0], rows[:, 1], rows[:, 2]], 1).reshape(16, *kernel.shape[2:])


def output_transform(m: jax.Array, batch: int, height: int, width: int) -> jax.Array:
    """``[16, B * H/2 * W/2, C]`` -> ``[B, H, W, C]``: A^T M A of every tile, the 2x2 tiles put in place."""
    c = m.shape[-1]
    m = m.reshape(4, 4, batch, height // 2, width // 2, c)
    rows = _combine(_AT, [m[i] for i in range(4)], 0)  # [2, 4, B, H/2, W/2, C]
    y = _combine(_AT, [rows[:, j] for j in range(4)], 1)  # [2 (row), 2 (column), B, H/2, W/2, C]
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(batch, height, width, c)


def _direct(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


@jax.custom_jvp
def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))`` of NHWC ``x`` ``[B, H, W, C_in]``
    (H, W even) and an HWIO ``kernel`` ``[3, 3, C_in, C_out]`` -> ``[B, H, W, C_out]``, by Winograd
    F(2x2, 3x3); its derivatives are the direct convolution's."""
    b, h, w, _ = x.shape
    m = jnp.einsum("knc,kcd->knd", input_transform(x), filter_transform(kernel))
    return output_transform(m, b, h, w)


@winograd_conv3x3.defjvp
def _jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]):
    return jax.jvp(_direct, primals, tangents)


def _as_tuple(value: Sequence[int] | None) -> tuple[int, ...]:
    return (1, 1) if value is None else tuple(value)


# lax.conv_general_dilated's keyword arguments and the values under which Winograd computes the call.
_ELIGIBLE_OPTIONS = {
    "lhs_dilation": lambda v: _as_tuple(v) == (1, 1),
    "rhs_dilation": lambda v: _as_tuple(v) == (1, 1),
    "dimension_numbers": lambda v: v is not None,  # checked against the shapes below
    "feature_group_count": lambda v: v == 1,
    "batch_group_count": lambda v: v == 1,
    "precision": lambda v: True,  # float32 on a CPU is exact whatever the requested precision
    "preferred_element_type": lambda v: v is None or v == jnp.float32,
    "out_sharding": lambda v: v is None,
}


def is_eligible(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any, **options: Any
) -> bool:
    """Whether :func:`winograd_conv3x3` computes ``lax.conv_general_dilated(lhs, rhs, window_strides,
    padding, **options)``."""
    if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    if "dimension_numbers" not in options or isinstance(padding, str):
        return False
    if not all(key in _ELIGIBLE_OPTIONS and _ELIGIBLE_OPTIONS[key](v) for key, v in options.items()):
        return False
    try:
        if lax.conv_dimension_numbers(lhs.shape, rhs.shape, options["dimension_numbers"]) != _NHWC:
            return False
        pads = tuple(tuple(p) for p in padding)
    except (TypeError, ValueError):
        return False
    _, h, w, c = lhs.shape
    return (
        tuple(rhs.shape[:3]) == (3, 3, c)
        and tuple(window_strides) == (1, 1)
        and pads == ((1, 1), (1, 1))
        and h % 2 == 0
        and w % 2 == 0
        and h * w >= MIN_PIXELS
    )


def conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any, **options: Any
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments, same result up to float rounding) that runs an
    eligible call (:func:`is_eligible`) as :func:`winograd_conv3x3` on a CPU and as XLA's convolution
    elsewhere. ``options``: ``lax.conv_general_dilated``'s keyword arguments."""

    def direct(x: jax.Array, k: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, k, window_strides, padding, **options)

    if not is_eligible(lhs, rhs, window_strides, padding, **options):
        return direct(lhs, rhs)
    return lax.platform_dependent(lhs, rhs, cpu=winograd_conv3x3, default=direct)
