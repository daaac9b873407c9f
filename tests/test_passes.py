"""Evaluation in passes (``jaxdiff.execution.passes``): the rule that picks the pass size, the same outputs as
one pass (one device and four), and the sampler built on it."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.execution.passes import CPU_PASS_MAX_BYTES, first_level_width, in_passes, pass_size
from jaxdiff.models import create_model, functional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two levels, class-conditional, attention: every input of apply_fn goes through the passes.
TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    num_class_embeds=3,
)


@pytest.mark.parametrize(
    "batch, hw, width, platform, want",
    [
        (64, (32, 32), 64, "cpu", 16),  # the course UNet: 16.8 MB at 64, 4 MiB at 16
        (16, (32, 32), 64, "cpu", 16),  # exactly 4 MiB: one pass
        (200, (16, 16), 32, "cpu", 100),  # the digits UNet: the largest divisor of 200 within 4 MiB
        (64, (16, 16), 32, "cpu", 64),  # 2 MiB: one pass
        (64, (32, 32), 64, "gpu", 64),  # only a CPU gets passes
        (67, (32, 32), 64, "cpu", 67),  # a prime batch: no pass size >= 8 divides it
        (64, (32, 32), None, "cpu", 64),  # a model whose width is unknown: one pass
    ],
)
def test_automatic_pass_size(batch, hw, width, platform, want):
    size = pass_size(0, batch, image_hw=hw, width=width, platform=platform)
    assert size == want
    assert batch % size == 0
    if size < batch:
        assert size * hw[0] * hw[1] * width * 4 <= CPU_PASS_MAX_BYTES


def test_a_given_pass_size_is_used_or_refused():
    assert pass_size(8, 64, image_hw=(32, 32), width=64, platform="gpu") == 8
    with pytest.raises(UserError, match=r"^sample.microbatch_size=5 must divide the per-device batch 64"):
        pass_size(5, 64, image_hw=(32, 32), width=64, platform="cpu", key="sample.microbatch_size")
    with pytest.raises(UserError, match=r"microbatch_size=-1 must be 0"):
        pass_size(-1, 64, image_hw=(32, 32), width=64, platform="cpu")


def test_first_level_width_of_both_unets():
    _, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    assert first_level_width(params) == 8
    _, params = functional(create_model({"_class_name": "BasicUNet"}, rngs=nnx.Rngs(0)))
    assert first_level_width(params) == 32
    assert first_level_width({"dense": {"kernel": np.zeros((3, 4))}}) is None


def test_passes_give_the_outputs_of_one_pass():
    apply_fn, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 8, 8, 1)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, 8), jnp.int32)
    labels = jnp.arange(8, dtype=jnp.int32) % 3
    ref = np.asarray(jax.jit(apply_fn)(params, x, t, labels))
    for passes in (2, 4, 8):
        out = np.asarray(jax.jit(in_passes(apply_fn, passes))(params, x, t, labels))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=f"{passes} passes")
    # A scalar timestep broadcasts as it does for apply_fn; class_labels may be left out.
    ref = np.asarray(jax.jit(lambda p, x: apply_fn(p, x, 500, labels))(params, x))
    out = np.asarray(jax.jit(lambda p, x: in_passes(apply_fn, 2)(p, x, 500, labels))(params, x))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert in_passes(apply_fn, 1) is apply_fn


def test_sample_fn_in_passes_draws_the_images_of_one_pass():
    from jaxdiff.inference import make_sample_fn
    from jaxdiff.objectives import get_objective
    from jaxdiff.sharding import make_mesh

    apply_fn, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    mesh = make_mesh()
    replicated = jax.tree.map(
        lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), params
    )
    sampling = get_objective("ddpm").make_sampling({}, "ddim", 3, 0.0)
    kw = dict(
        image_shape=(8, 8, 1),
        mesh=mesh,
        param_sharding=replicated,
        batch_size=8,
        num_classes=3,
    )
    one = make_sample_fn(apply_fn, sampling, microbatch_size=8, **kw)
    four = make_sample_fn(apply_fn, sampling, microbatch_size=2, **kw)
    key = jax.random.key(0)
    np.testing.assert_allclose(
        np.asarray(four.fn(params, key, 0)), np.asarray(one.fn(params, key, 0)), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(UserError, match=r"microbatch_size=3 must divide the per-device batch 8"):
        make_sample_fn(apply_fn, sampling, microbatch_size=3, **kw)


_FOUR_DEVICES = textwrap.dedent(
    """
    import numpy as np, jax, jax.numpy as jnp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxdiff.models import create_model, functional
    from jaxdiff.execution.passes import in_passes
    from tests.test_passes import TINY_UNET

    assert jax.device_count() == 4, jax.devices()
    apply_fn, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 1)).astype(np.float32)
    t = rng.integers(0, 1000, 16).astype(np.int32)
    labels = (np.arange(16) % 3).astype(np.int32)
    ref = np.asarray(jax.jit(apply_fn)(params, x, t, labels))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    xs, ts, ls = (jax.device_put(a, rows) for a in (x, t, labels))
    for passes in (2, 4):
        fn = jax.jit(in_passes(apply_fn, passes, rows))
        out = fn(params, xs, ts, ls)
        assert out.sharding.is_equivalent_to(rows, 4), out.sharding
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
        # Each device keeps its own rows: the compiled program moves no image between devices.
        hlo = fn.lower(params, xs, ts, ls).compile().as_text()
        assert "all-gather" not in hlo and "all-to-all" not in hlo and "collective-permute" not in hlo
    print("ok")
    """
)


@pytest.mark.slow
def test_passes_on_four_devices_equal_one_device_and_keep_rows_in_place():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
