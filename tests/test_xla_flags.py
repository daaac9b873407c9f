"""jaxdiff's CPU XLA defaults: added at import, never over a user's own setting, opt-out honoured."""

import json
import os
import subprocess
import sys

import pytest

from jaxdiff.execution import xla_flags

OPTION = "xla_cpu_experimental_ynn_fusion_type"

# Prints XLA_FLAGS after `import jaxdiff` and whether a compiled convolution still goes to YNNPACK
# (XLA only hands convolutions of some size to YNNPACK: 8x8x32 -> 32 is one).
PROBE = """
import json, os, sys
pre = sys.argv[1]
if pre == "backend_first":
    import jax
    jax.devices()
import jaxdiff  # noqa: F401
import jax, jax.numpy as jnp
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text().lower()
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS"), "ynn_conv": "ynn" in hlo}))
"""


def _probe(env_updates: dict[str, str], pre: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
    env.update(env_updates)
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, pre], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flag_known_to_this_jaxlib():
    # XLA aborts on unknown flags: the guard must find the option and its value in jaxlib's XLA ...
    for _, _, needles in xla_flags.CPU_XLA_FLAGS:
        assert xla_flags.flag_is_known(needles)
    # ... and must not claim to know a flag that does not exist.
    assert not xla_flags.flag_is_known((b"xla_cpu_no_such_flag_for_jaxdiff_test",))


def test_import_adds_flag_and_convolutions_leave_ynnpack():
    res = _probe({})
    assert res["xla_flags"] == f"--{OPTION}=-individual_convolution"
    assert res["ynn_conv"] is False


def test_user_setting_kept_untouched():
    user = f"--xla_cpu_enable_fast_math=false --{OPTION}=+individual_dot"
    res = _probe({"XLA_FLAGS": user})
    assert res["xla_flags"] == user
    assert res["ynn_conv"] is True  # the user's list (default + dot) keeps YNNPACK convolutions


def test_other_user_flags_kept_and_extended():
    res = _probe({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert res["xla_flags"] == f"--xla_cpu_enable_fast_math=false --{OPTION}=-individual_convolution"
    assert res["ynn_conv"] is False


def test_opt_out():
    res = _probe({xla_flags.OPT_OUT_ENV: "1"})
    assert res["xla_flags"] is None
    assert res["ynn_conv"] is True


def test_backend_already_initialised_leaves_flags_alone():
    res = _probe({}, pre="backend_first")
    assert res["xla_flags"] is None


@pytest.mark.parametrize(
    "flags, expected",
    [
        (f"--{OPTION}=-individual_convolution", True),
        (f"--xla_dump_to=/tmp  --{OPTION}=", True),
        (f"-{OPTION}", True),
        (f"--{OPTION}_extra=1", False),
        ("--xla_cpu_enable_fast_math=true", False),
        ("", False),
    ],
)
def test_mentions_option(flags, expected):
    assert xla_flags.mentions_option(flags, OPTION) is expected


def test_apply_on_a_given_environment(monkeypatch):
    # In this pytest process other tests may have created a backend already; the probe tests cover that.
    monkeypatch.setattr(xla_flags, "_backend_initialised", lambda: False)
    env = {"XLA_FLAGS": "  --xla_dump_to=/tmp/x "}
    added = xla_flags.apply_cpu_defaults(env)
    assert added == [f"--{OPTION}=-individual_convolution"]
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x --{OPTION}=-individual_convolution"
    assert xla_flags.apply_cpu_defaults(env) == []  # idempotent
    assert xla_flags.apply_cpu_defaults({xla_flags.OPT_OUT_ENV: "true"}) == []


# -- faster formulations must stay exact: jaxdiff's GroupNorm against torch.nn.GroupNorm ---------------


@pytest.mark.parametrize("shape, groups, offset", [((2, 8, 8, 64), 32, 0.0), ((3, 4, 6, 12), 4, 5.0)])
def test_group_norm_values_and_gradients_match_torch(shape, groups, offset):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from jaxdiff.models.layers import group_norm

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    scale = rng.standard_normal(shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)

    ref = torch.nn.GroupNorm(groups, shape[-1], eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(scale))
        ref.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    t_out = ty.detach().numpy().transpose(0, 2, 3, 1)
    t_dx = tx.grad.numpy().transpose(0, 2, 3, 1)

    layer = group_norm(shape[-1], groups, 1e-5, rngs=nnx.Rngs(0))
    layer.scale.value, layer.bias.value = jnp.asarray(scale), jnp.asarray(bias)
    graphdef, params = nnx.split(layer)

    def f(params, x):
        return nnx.merge(graphdef, params)(x)

    out, vjp = jax.vjp(jax.jit(f), params, jnp.asarray(x))
    d_params, dx = vjp(jnp.asarray(dy))

    def close(a, b, rel):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= rel * np.abs(b).max()

    close(out, t_out, 1e-5)
    close(dx, t_dx, 1e-4)
    close(d_params["scale"].value, ref.weight.grad.numpy(), 1e-4)
    close(d_params["bias"].value, ref.bias.grad.numpy(), 1e-5)
