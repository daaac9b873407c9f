"""Winograd F(2x2, 3x3) convolutions: the same numbers as XLA's convolution, used only where eligible."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxdiff.execution import winograd
from jaxdiff.models import layers

DN = ("NHWC", "HWIO", "NHWC")
SAME1 = ((1, 1), (1, 1))


def _direct(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), SAME1, dimension_numbers=DN)


def _winograd(x, k):
    return winograd.conv_general_dilated(x, k, (1, 1), SAME1, dimension_numbers=DN)


def _float64_reference(x, k):
    """A float64 direct convolution in numpy (jax stays float32 in this suite)."""
    b, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("bhwc,cd->bhwd", xp[:, i : i + h, j : j + w], k[i, j].astype(np.float64))
    return out


def _rel(a, ref):
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("shape,c_out", [((2, 8, 8, 5), 7), ((2, 16, 12, 4), 3), ((1, 32, 32, 16), 16)])
def test_forward_is_as_accurate_as_xlas_convolution(shape, c_out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    k = (rng.standard_normal((3, 3, shape[-1], c_out)) / np.sqrt(9 * shape[-1])).astype(np.float32)
    ref = _float64_reference(x, k)
    err_winograd = _rel(jax.jit(_winograd)(x, k), ref)
    err_direct = _rel(jax.jit(_direct)(x, k), ref)
    assert err_winograd < max(4 * err_direct, 1e-6), (err_winograd, err_direct)
    # and it is not XLA's convolution under another name
    assert np.asarray(jax.jit(_winograd)(x, k)).tobytes() != np.asarray(jax.jit(_direct)(x, k)).tobytes()


def test_eligible_call_compiles_without_a_convolution_on_cpu():
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
    hlo = jax.jit(_winograd).lower(x, k).compile().as_text()
    assert " convolution(" not in hlo
    assert " convolution(" in jax.jit(_direct).lower(x, k).compile().as_text()


def test_gradients_and_jvp_are_the_direct_convolutions():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))

    g_w = jax.jit(jax.grad(loss(_winograd), argnums=(0, 1)))(x, k)
    g_d = jax.jit(jax.grad(loss(_direct), argnums=(0, 1)))(x, k)
    for a, b in zip(g_w, g_d, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    tx, tk = jnp.ones_like(x), jnp.full_like(k, 0.5)
    y_w, dy_w = jax.jvp(_winograd, (x, k), (tx, tk))
    y_d, dy_d = jax.jvp(_direct, (x, k), (tx, tk))
    np.testing.assert_allclose(dy_w, dy_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_w, y_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["stride2", "string_padding", "4x4_image", "odd_width", "bfloat16", "groups", "dilation", "5x5_kernel"],
)
def test_ineligible_calls_are_xlas_convolution_exactly(case):
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 4)).astype(np.float32)
    k = np.random.default_rng(3).standard_normal((3, 3, 4, 4)).astype(np.float32)
    kwargs = dict(window_strides=(1, 1), padding=SAME1, dimension_numbers=DN)
    if case == "stride2":
        kwargs["window_strides"] = (2, 2)
    elif case == "string_padding":
        kwargs["padding"] = "SAME"
    elif case == "4x4_image":
        x = x[:, :4, :4]
    elif case == "odd_width":
        x = x[:, :, :7]
    elif case == "bfloat16":
        x, k = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    elif case == "groups":
        k = k[:, :, :2]
        kwargs["feature_group_count"] = 2
    elif case == "dilation":
        kwargs["rhs_dilation"] = (2, 2)
    elif case == "5x5_kernel":
        k = np.random.default_rng(4).standard_normal((5, 5, 4, 4)).astype(np.float32)
        kwargs["padding"] = ((2, 2), (2, 2))
    assert not winograd.is_eligible(jnp.asarray(x), jnp.asarray(k), **kwargs)
    ours = jax.jit(lambda x, k: winograd.conv_general_dilated(x, k, **kwargs))(x, k)
    theirs = jax.jit(lambda x, k: lax.conv_general_dilated(x, k, **kwargs))(x, k)
    assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes()


def test_conv2d_uses_winograd_unless_opted_out(monkeypatch):
    monkeypatch.delenv(winograd.OPT_OUT_ENV, raising=False)
    conv = layers.conv2d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))
    assert conv.conv_general_dilated is winograd.conv_general_dilated
    monkeypatch.setenv(winograd.OPT_OUT_ENV, "1")
    conv = layers.conv2d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))
    assert conv.conv_general_dilated is lax.conv_general_dilated


@pytest.mark.slow
def test_opt_out_gives_xlas_convolution_in_a_fresh_process():
    probe = (
        "import jax, jax.numpy as jnp; from flax import nnx; from jaxdiff.models import layers\n"
        "conv = layers.conv2d(4, 4, 3, padding=1, rngs=nnx.Rngs(0))\n"
        "hlo = jax.jit(lambda x: conv(x)).lower(jnp.ones((1, 8, 8, 4))).compile().as_text()\n"
        "print(' convolution(' in hlo)\n"
    )
    results = {}
    for value in ("", "1"):
        env = {**os.environ, winograd.OPT_OUT_ENV: value, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, check=True
        )
        results[value] = out.stdout.strip().splitlines()[-1]
    assert results == {"": "False", "1": "True"}
