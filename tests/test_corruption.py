"""jaxdiff.corruption against a torch re-implementation of the course's "Diffusion Models from Scratch"."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxdiff import corruption
from jaxdiff.errors import UserError
from tests.conftest import load_config


def _course_corrupt(x, amount, noise):
    # The course's corrupt(), with its torch.rand_like noise passed in: NCHW, amount [B].
    amount = amount.view(-1, 1, 1, 1)
    return x * (1 - amount) + noise * amount


def _to_nchw(a):
    return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2).contiguous()


def _to_nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


class _TinyNet:
    """A one-conv stand-in model, written twice: torch (NCHW, OIHW) and JAX (NHWC, HWIO)."""

    def __init__(self, seed=0, channels=1):
        g = np.random.default_rng(seed)
        self.w = g.normal(0, 0.4, (channels, channels, 3, 3)).astype(np.float32)  # OIHW
        self.b = g.normal(0, 0.1, (channels,)).astype(np.float32)
        self.t_seen = []

    def torch_forward(self, x):
        w, b = torch.from_numpy(self.w), torch.from_numpy(self.b)
        return torch.sigmoid(torch.nn.functional.conv2d(x, w, b, padding=1))

    def apply_fn(self, params, x, t, class_labels=None, key=None):
        self.t_seen.append(t)
        w = jnp.transpose(params["w"], (2, 3, 1, 0))  # OIHW -> HWIO
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.sigmoid(y + params["b"])

    @property
    def params(self):
        return {"w": jnp.asarray(self.w), "b": jnp.asarray(self.b)}


def test_corrupt_matches_the_course_formula():
    g = np.random.default_rng(0)
    x = g.uniform(0, 1, (8, 6, 5, 3)).astype(np.float32)
    noise = g.uniform(0, 1, x.shape).astype(np.float32)
    amount = np.linspace(0, 1, 8).astype(np.float32)
    got = corruption.corrupt(jnp.asarray(x), jnp.asarray(amount), jnp.asarray(noise))
    want = _to_nhwc(_course_corrupt(_to_nchw(x), torch.from_numpy(amount), _to_nchw(noise)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-7)
    # amount 0 is the clean image, amount 1 is pure noise.
    np.testing.assert_array_equal(np.asarray(got[0]), x[0])
    np.testing.assert_array_equal(np.asarray(got[-1]), noise[-1])


def test_corrupt_rejects_mismatched_shapes():
    x = jnp.zeros((4, 8, 8, 1))
    with pytest.raises(UserError, match="amount shape"):
        corruption.corrupt(x, jnp.zeros((3,)), x)
    with pytest.raises(UserError, match="amount shape"):
        corruption.corrupt(x, jnp.zeros((4, 1)), x)
    with pytest.raises(UserError, match="noise shape"):
        corruption.corrupt(x, jnp.zeros((4,)), jnp.zeros((4, 8, 8, 3)))


def test_loss_is_the_course_training_step_loss():
    net = _TinyNet(seed=1)
    x0 = np.random.default_rng(2).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    key = jax.random.key(3)
    loss, aux = corruption.make_from_scratch_loss()(net.apply_fn, net.params, jnp.asarray(x0), key)

    # The documented key use: amounts, noise, dropout, in that order.
    amount_key, noise_key, _ = jax.random.split(key, 3)
    amount = np.array(jax.random.uniform(amount_key, (16,)))
    noise = np.array(jax.random.uniform(noise_key, x0.shape))
    noisy_x = _course_corrupt(_to_nchw(x0), torch.from_numpy(amount), _to_nchw(noise))
    want = torch.nn.MSELoss()(net.torch_forward(noisy_x), _to_nchw(x0))
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(float(aux["mse"]), float(loss))
    np.testing.assert_allclose(float(aux["mean_amount"]), amount.mean(), rtol=1e-6)
    # Like the course (no timestep input / t=0), the model sees timestep 0.
    np.testing.assert_array_equal(np.asarray(net.t_seen[-1]), np.zeros(16))


def test_loss_draws_uniform_amounts_and_uniform_noise():
    # With x0 = 0 and an identity model, loss = mean(amount^2 * noise^2): 1/3 * 1/3 for U[0,1] amounts and
    # U[0,1) noise (it would be 1/3 for Gaussian noise), and every noisy pixel lies in [0, 1).
    seen = {}

    def identity(params, x, t, class_labels=None, key=None):
        seen["x"] = x
        return x

    x0 = jnp.zeros((512, 8, 8, 1))
    loss, _ = corruption.make_from_scratch_loss()(identity, {}, x0, jax.random.key(0))
    assert abs(float(loss) - 1 / 9) < 0.01
    assert float(seen["x"].min()) >= 0 and float(seen["x"].max()) < 1


def test_sampler_matches_the_course_loop():
    net = _TinyNet(seed=4)
    n_steps = 5
    x_start = np.random.default_rng(5).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)

    # The course's sampling cell, verbatim in its arithmetic.
    x = _to_nchw(x_start)
    step_history, pred_output_history = [x], []
    for i in range(n_steps):
        with torch.no_grad():
            pred = net.torch_forward(x)
        pred_output_history.append(pred)
        mix_factor = 1 / (n_steps - i)
        x = x * (1 - mix_factor) + pred * mix_factor
        step_history.append(x)

    got, hist = corruption.from_scratch_sample(
        net.apply_fn, net.params, jnp.asarray(x_start), n_steps, return_intermediates=True
    )
    np.testing.assert_allclose(np.asarray(got), _to_nhwc(x), atol=1e-6)
    assert hist["x"].shape == hist["pred"].shape == (n_steps, 4, 8, 8, 1)
    for i in range(n_steps):
        np.testing.assert_allclose(np.asarray(hist["x"][i]), _to_nhwc(step_history[i]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(hist["pred"][i]), _to_nhwc(pred_output_history[i]), atol=1e-6)
    # The last mix factor is 1: the output is the last prediction.
    np.testing.assert_allclose(np.asarray(got), np.asarray(hist["pred"][-1]), atol=1e-6)
    plain = corruption.from_scratch_sample(net.apply_fn, net.params, jnp.asarray(x_start), n_steps)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(got), atol=1e-7)


@pytest.mark.parametrize("n_steps", [0, -1, 2.0, True])
def test_sampler_rejects_bad_step_counts(n_steps):
    net = _TinyNet()
    with pytest.raises(UserError, match="n_steps"):
        corruption.from_scratch_sample(net.apply_fn, net.params, jnp.zeros((1, 4, 4, 1)), n_steps)


def test_training_basic_unet_reduces_the_loss():
    # The course's setup in miniature: BasicUNet, Adam(lr=1e-3), predict the clean image.
    from flax import nnx

    from jaxdiff.models import create_model, functional

    model = create_model({"_class_name": "BasicUNet", "in_channels": 1, "out_channels": 1}, rngs=nnx.Rngs(0))
    apply_fn, params = functional(model)
    loss_fn = corruption.make_from_scratch_loss()
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    # A fixed batch of blurry blobs in [0, 1]: structure a denoiser can learn in a few steps.
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    centers = g.uniform(4, 12, (16, 2))
    x0 = np.exp(-((yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2) / 8.0)
    x0 = jnp.asarray(x0[..., None], jnp.float32)

    @jax.jit
    def train_step(params, opt_state, key):
        (loss, _), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(apply_fn, params, x0, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    loss_at = jax.jit(lambda p, k: loss_fn(apply_fn, p, x0, k)[0])
    eval_keys = jax.random.split(jax.random.key(1), 4)
    eval_loss = lambda p: np.mean([float(loss_at(p, k)) for k in eval_keys])
    before = eval_loss(params)
    for key in jax.random.split(jax.random.key(2), 30):
        params, opt_state, _ = train_step(params, opt_state, key)
    after = eval_loss(params)
    assert after < 0.5 * before, (before, after)

    samples = corruption.from_scratch_sample(
        apply_fn, params, corruption.from_scratch_noise(jax.random.key(3), (4, 16, 16, 1)), 4
    )
    assert samples.shape == (4, 16, 16, 1) and bool(jnp.all(jnp.isfinite(samples)))


def test_from_scratch_config_is_the_course_setup():
    config = load_config("from_scratch")
    assert config.model["_class_name"] == "BasicUNet"
    assert config.diffusion.objective == "from_scratch"
    train = config.train
    assert (train.batch_size, train.learning_rate, train.lr_schedule) == (128, 1e-3, "constant")
    assert config.data.image_size % 4 == 0  # BasicUNet pools twice


@pytest.mark.slow
def test_from_scratch_config_trains_with_the_train_loop(tmp_path):
    import json

    from jaxdiff.training.step import make_loss_fn
    from jaxdiff.training.trainer import train_and_evaluate

    config = load_config("from_scratch")
    assert make_loss_fn(config).evaluate.__qualname__.startswith("make_from_scratch_loss.")
    config.data.image_size = config.model.sample_size = 16
    config.train.batch_size = 8
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.checkpoint_every = 0
    config.train.sample_every = 0
    config.sample.num_samples = config.sample.batch_size = 4
    config.sample.num_inference_steps = 3
    result = train_and_evaluate(config, tmp_path)
    assert result.step == 3
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert list((tmp_path / "samples").glob("*.png"))
