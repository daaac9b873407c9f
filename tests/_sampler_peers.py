"""Shared by the schedule / sampler tests: one smooth test model in torch and JAX, and a diffusers loop."""

from __future__ import annotations

import contextlib
from unittest import mock

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers.schedulers import (
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_edm_dpmsolver_multistep,
    scheduling_edm_euler,
    scheduling_euler_ancestral_discrete,
    scheduling_flow_match_euler_discrete,
)

from jaxdiff.samplers import step_noise

CHANNELS = 3
_rng = np.random.default_rng(1234)
WEIGHT = (_rng.standard_normal((CHANNELS, CHANNELS)) / np.sqrt(CHANNELS)).astype(np.float32)
BIAS = (0.1 * _rng.standard_normal(CHANNELS)).astype(np.float32)


def _smooth_model(xp, x, t):
    """A deterministic, smooth, x- and t-dependent stand-in for a UNet: ``x [B, H, W, C]``, ``t [B]`` float.

    Mostly ``0.8 x`` (roughly what a noise predictor outputs at high noise) plus a channel-mixing
    nonlinearity, so that float32 rounding is not amplified by the sampler's dynamics more than a
    trained model's would be. ``xp`` is a namespace with ``tanh``, ``sin``, ``cos``, ``reshape`` and the
    constants.
    """
    tt = xp.reshape(t, (-1, 1, 1, 1)) / 1000.0
    nonlinear = xp.tanh(x @ xp.weight + xp.bias) * (1 + 0.5 * xp.sin(3 * tt))
    return 0.8 * x + 0.2 * nonlinear + 0.1 * x * xp.cos(2 * tt)


class _TorchNS:
    tanh, sin, cos, reshape = torch.tanh, torch.sin, torch.cos, torch.reshape
    weight, bias = torch.from_numpy(WEIGHT), torch.from_numpy(BIAS)


class _JaxNS:
    tanh, sin, cos, reshape = jnp.tanh, jnp.sin, jnp.cos, jnp.reshape
    weight, bias = jnp.asarray(WEIGHT), jnp.asarray(BIAS)


def torch_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _smooth_model(_TorchNS, x, t.to(torch.float32))


def jax_model(x: jax.Array, t: jax.Array) -> jax.Array:
    return _smooth_model(_JaxNS, x, t.astype(jnp.float32))


def diffusers_scheduler(config: dict):
    """``<_class_name>.from_config(config)``."""
    return getattr(diffusers, config["_class_name"]).from_config(config)


# diffusers' scheduler modules whose step draws noise with randn_tensor.
_NOISY_MODULES = (
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_edm_dpmsolver_multistep,
    scheduling_edm_euler,
    scheduling_euler_ancestral_discrete,
    scheduling_flow_match_euler_discrete,
)


def run_diffusers(
    config: dict, num_inference_steps: int, x_T: np.ndarray, key=None, call: dict | None = None
):
    """A diffusers pipeline's loop on ``x_T`` (NHWC: the schedulers used here are layout-agnostic).

    ``call`` are options of ``step`` (DDIM's ``eta``, EDM Euler's ``s_churn``, ...). Stochastic steps get
    jaxdiff's noise (``step_noise(key, i, shape)``): DDIM through ``variance_noise``, the others by
    replacing ``randn_tensor`` in their modules. Returns ``(x0, xs, pred_x0s)`` where ``xs[i]``
    is the sample entering step ``i`` and ``pred_x0s[i]`` the x0 prediction at step ``i`` (for the
    multistep solvers, the data prediction they store; UniPC without ``predict_x0``: its conversion to x0).
    """
    call = dict(call or {})
    scheduler = diffusers_scheduler(config)
    scheduler.set_timesteps(num_inference_steps)
    # Flow matching has neither an initial noise scale nor input scaling.
    x = torch.from_numpy(x_T) * getattr(scheduler, "init_noise_sigma", 1.0)
    scale_model_input = getattr(scheduler, "scale_model_input", lambda x, t: x)
    current = {}
    xs, pred_x0s = [], []
    with contextlib.ExitStack() as patches:
        for module in _NOISY_MODULES:
            patches.enter_context(mock.patch.object(module, "randn_tensor", lambda *a, **k: current["noise"]))
        for i, t in enumerate(scheduler.timesteps):
            if key is not None:
                current["noise"] = torch.from_numpy(np.asarray(step_noise(key, i, tuple(x.shape))))
            model_output = torch_model(scale_model_input(x, t), t.expand(x.shape[0]))
            kwargs = dict(call)  # step()'s options: DDIM's eta, ..., EDM Euler's s_churn, ...
            if config["_class_name"] == "DDIMScheduler" and call.get("eta", 0.0) > 0:
                kwargs["variance_noise"] = current["noise"]
            xs.append(x.numpy().copy())
            out = scheduler.step(model_output, t, x, **kwargs)
            if config["_class_name"] == "UniPCMultistepScheduler" and not scheduler.config.predict_x0:
                # Its own x0 conversion, as at this step (the index is back by one after step()).
                scheduler.predict_x0, scheduler._step_index = True, scheduler._step_index - 1
                pred_x0 = scheduler.convert_model_output(model_output, sample=torch.from_numpy(xs[-1]))
                scheduler.predict_x0, scheduler._step_index = False, scheduler._step_index + 1
                pred_x0s.append(pred_x0.numpy().copy())
            elif config["_class_name"] == "FlowMatchEulerDiscreteScheduler":
                pred_x0s.append((torch.from_numpy(xs[-1]) - scheduler.sigmas[i] * model_output).numpy())
            elif "Multistep" in config["_class_name"]:
                pred_x0s.append(scheduler.model_outputs[-1].numpy().copy())
            else:
                pred_x0s.append(out.pred_original_sample.numpy().copy())
            x = out.prev_sample
    return x.numpy(), np.stack(xs), np.stack(pred_x0s)


def assert_rel_close(actual, desired, rtol: float = 1e-5, what: str = "") -> None:
    """``max |actual - desired| <= rtol * max |desired|`` (relative to the array's scale)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    err = np.max(np.abs(actual - desired))
    scale = max(np.max(np.abs(desired)), 1e-12)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"
