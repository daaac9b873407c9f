"""Training targets, min-SNR-gamma weights and the diffusion loss against diffusers' training recipe."""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from jaxdiff.errors import UserError
from jaxdiff.losses import (
    LOSS_WEIGHTINGS,
    PREDICTION_TYPES,
    diffusion_loss,
    loss_weights,
    make_diffusion_loss,
    training_target,
)
from jaxdiff.schedules import make_schedule

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def _inputs(batch=5, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (batch, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 3, 250, 700, 999][:batch])
    return x0, noise, t


def _apply_fn(params, x, t, class_labels=None, key=None):
    """A tiny 'model': a per-channel linear map of x_t, shifted with t and the label (pure, jit-able)."""
    shift = t.astype(jnp.float32)[:, None, None, None] / 1000.0
    if class_labels is not None:
        shift = shift + 0.1 * class_labels.astype(jnp.float32)[:, None, None, None]
    return x @ params["w"] + shift


def _torch_reference(prediction_type, snr_gamma, x0, noise, t, w, labels=None):
    """diffusers' train_text_to_image loss (with its min-SNR branch when snr_gamma is set), in torch."""
    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type, **SCHEDULE)
    x0_t, noise_t, t_t = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    noisy = scheduler.add_noise(x0_t, noise_t, t_t)
    shift = t_t.float()[:, None, None, None] / 1000.0
    if labels is not None:
        shift = shift + 0.1 * torch.from_numpy(labels).float()[:, None, None, None]
    model_pred = noisy @ torch.from_numpy(w) + shift
    target = {
        "epsilon": noise_t,
        "sample": x0_t,
        "v_prediction": scheduler.get_velocity(x0_t, noise_t, t_t),
    }[prediction_type]
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean").item()
    snr = compute_snr(scheduler, t_t)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(t_t)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        weights = weights / snr
    elif prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean().item()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_training_target_matches_diffusers(prediction_type):
    schedule = make_schedule(**SCHEDULE)
    scheduler = diffusers.DDPMScheduler(**SCHEDULE)
    x0, noise, t = _inputs()
    ours = training_target(schedule, x0, noise, t, prediction_type)
    expected = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": scheduler.get_velocity(
            torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
        ).numpy(),
    }[prediction_type]
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("loss_weighting, snr_gamma", [("none", None), ("min_snr", 5.0), ("min_snr", 1.0)])
def test_diffusion_loss_matches_diffusers_recipe(prediction_type, loss_weighting, snr_gamma):
    schedule = make_schedule(**SCHEDULE)
    x0, noise, t = _inputs()
    w = (np.eye(3) + 0.2 * np.random.default_rng(1).standard_normal((3, 3))).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    kwargs = dict(prediction_type=prediction_type, loss_weighting=loss_weighting, snr_gamma=snr_gamma or 5.0)
    loss, aux = diffusion_loss(schedule, _apply_fn, {"w": w}, x0, t, noise, None, labels, **kwargs)
    expected = _torch_reference(prediction_type, snr_gamma, x0, noise, t, w, labels)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert aux["per_example_mse"].shape == (5,)
    np.testing.assert_array_equal(np.asarray(aux["timesteps"]), t)
    np.testing.assert_allclose(float(aux["mse"]), float(jnp.mean(aux["per_example_mse"])), rtol=1e-6)


def test_min_snr_weights_and_zero_terminal_snr():
    schedule = make_schedule(rescale_betas_zero_snr=True)
    t = jnp.array([0, 10, 500, 999])
    snr_t = (schedule.alphas_cumprod / (1 - schedule.alphas_cumprod))[t]
    gamma = 5.0
    eps = loss_weights(schedule, t, "epsilon", "min_snr", gamma)
    v = loss_weights(schedule, t, "v_prediction", "min_snr", gamma)
    x0 = loss_weights(schedule, t, "sample", "min_snr", gamma)
    # Min-SNR-gamma: the x0-space weight min(SNR, gamma), re-expressed for each prediction target.
    np.testing.assert_allclose(np.asarray(x0), np.minimum(np.asarray(snr_t), gamma), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(v), np.asarray(x0) / (np.asarray(snr_t) + 1), rtol=1e-4)
    # At zero SNR (t = 999 here) the epsilon weight is min(1, gamma / 0) = 1, not 0 / 0.
    assert np.all(np.isfinite(np.asarray(eps))) and float(eps[-1]) == 1.0 and float(eps[0]) < 1.0
    assert np.asarray(loss_weights(schedule, t)).tolist() == [1.0] * 4


def test_make_diffusion_loss_draws_as_documented():
    schedule = make_schedule(num_train_timesteps=50)
    loss_fn = make_diffusion_loss(schedule, "v_prediction", "min_snr", 3.0)
    x0 = jnp.asarray(_inputs(batch=5)[0])
    key = jax.random.key(7)
    seen = {}

    def apply_fn(params, x, t, class_labels=None, key=None):
        seen["key"], seen["labels"] = key, class_labels
        return _apply_fn(params, x, t, class_labels, key)

    params = {"w": jnp.eye(3)}
    labels = jnp.arange(5)
    loss, aux = loss_fn(apply_fn, params, x0, key, labels)
    key_t, key_noise, key_dropout = jax.random.split(key, 3)
    t = jax.random.randint(key_t, (5,), 0, 50)
    noise = jax.random.normal(key_noise, x0.shape)
    expected, _ = diffusion_loss(
        schedule, _apply_fn, params, x0, t, noise, key_dropout, labels,
        prediction_type="v_prediction", loss_weighting="min_snr", snr_gamma=3.0,
    )  # fmt: skip
    assert float(loss) == float(expected)
    np.testing.assert_array_equal(np.asarray(aux["timesteps"]), np.asarray(t))
    assert seen["labels"] is labels
    assert np.array_equal(jax.random.key_data(seen["key"]), jax.random.key_data(key_dropout))

    # Many draws: t covers {0..T-1} uniformly; the loss is jit-able and differentiable.
    ts = jax.vmap(lambda k: loss_fn(_apply_fn, params, x0, k)[1]["timesteps"])(jax.random.split(key, 400))
    ts = np.asarray(ts).ravel()
    assert ts.min() == 0 and ts.max() == 49 and len(np.unique(ts)) == 50
    grads = jax.jit(jax.grad(lambda p: loss_fn(_apply_fn, p, x0, key)[0]))(params)
    assert grads["w"].shape == (3, 3) and np.all(np.isfinite(np.asarray(grads["w"])))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(prediction_type="eps"), "prediction_type='eps' is not one of epsilon, sample, v_prediction"),
        (dict(loss_weighting="snr"), "loss_weighting='snr' is not one of " + ", ".join(LOSS_WEIGHTINGS)),
    ],
)
def test_bad_options_raise_user_error(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        make_diffusion_loss(make_schedule(num_train_timesteps=10), **kwargs)
