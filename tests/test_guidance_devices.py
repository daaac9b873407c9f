"""Guided samples (classifier-free guidance with rescale, and loss guidance) on 1 and 8 simulated devices
agree to float tolerance. The device count is fixed when JAX starts: each count runs in a fresh process."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests._mp_worker import REPO, subprocess_env
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # two JAX processes compiling a guided sampler

_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jaxdiff.inference import generate, make_sample_fn
    from jaxdiff.models import create_model, functional
    from jaxdiff.objectives import get_objective
    from jaxdiff.sharding import make_mesh, replicated
    from tests.test_guidance import TINY_UNET

    assert jax.device_count() == int(sys.argv[2]), jax.devices()
    apply_fn, params = functional(create_model(TINY_UNET, rngs=nnx.Rngs(0)))
    mesh = make_mesh()
    shardings = jax.tree.map(lambda _: replicated(mesh), params)
    params = jax.device_put(params, shardings)
    fn = make_sample_fn(
        apply_fn,
        get_objective("ddpm").make_sampling({}, "ddim", 3, 0.0),
        image_shape=(8, 8, 1), mesh=mesh, param_sharding=shardings, batch_size=8, num_classes=3,
        class_labels=[2, 0, 1], guidance_scale=2.5, guidance_rescale=0.5, null_label=3,
        loss_fn=lambda x0, t: jnp.mean((x0 - 0.5) ** 2), loss_scale=0.5,
    )
    images = generate(fn, params, seed=0, num_samples=16)
    np.save(sys.argv[1], images)
    print("ok")
    """
)


def test_guided_samples_on_one_and_eight_devices_agree(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)
    out = {}
    for n in (1, 8):
        path = tmp_path / f"{n}.npy"
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(path), str(n)],
            cwd=REPO,
            env=subprocess_env(cache, n),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
        out[n] = np.load(path)
    assert out[1].shape == (16, 8, 8, 1) and np.abs(out[1]).max() < 100, np.abs(out[1]).max()
    np.testing.assert_allclose(out[8], out[1], rtol=1e-4, atol=1e-4)
