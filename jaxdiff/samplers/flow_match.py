"""Euler's method for flow-matching / rectified-flow models (Lipman et al. 2023, Liu et al. 2023), as
diffusers' ``FlowMatchEulerDiscreteScheduler``.

The data path is ``x_sigma = (1 - sigma) x0 + sigma noise`` with ``sigma`` from 1 (noise) to 0, and the
model predicts the velocity ``u = noise - x0``; its timestep input is ``sigma * num_train_timesteps``
(float32). ``shift`` warps the sigmas as ``shift s / (1 + (shift - 1) s)`` (Esser et al. 2024, SD3).
``stochastic_sampling`` replaces the Euler step by re-noising the ``x0`` estimate to ``sigma_next`` with
fresh noise (as diffusers does; since the estimate is a posterior mean this narrows the distribution).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import check_num_steps
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry

KIND = "flow_euler"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "FlowMatchEulerDiscreteScheduler"

# FlowMatchEulerDiscreteScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}
CALL_DEFAULTS: dict[str, Any] = {}
# Not implemented (defaults only): resolution-dependent ("dynamic") shifting and its time-shift variants,
# the terminal stretch, inverted sigmas and the Karras / exponential / beta re-spacings. The dynamic
# shifting's own parameters (base_shift, ...) are read only when it is on, so any value is accepted.
IMPLEMENTED = frozenset(
    {
        "num_train_timesteps",
        "shift",
        "stochastic_sampling",
        "base_shift",
        "max_shift",
        "base_image_seq_len",
        "max_image_seq_len",
    }
)

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="flow_euler",
        class_name=CLASS_NAME,
        aliases=("flow-euler", "flow_match_euler", "rectified_flow"),
        discrete_schedule=False,
    ),
)


@dataclasses.dataclass(frozen=True)
class FlowMatchOptions:
    stochastic_sampling: bool
    kind: ClassVar[str] = KIND

    @property
    def stochastic(self) -> bool:
        return self.stochastic_sampling


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The flow Euler sampler for a complete, validated ``FlowMatchEulerDiscreteScheduler`` config."""
    shift = cfg["shift"]
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise UserError(f"shift={shift!r} must be a positive number")
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)
    # The training sigmas as diffusers' __init__ builds them (float32, shifted once) give the range ...
    train = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)
    train = _shifted(train, np.float32(shift)).astype(np.float32)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    # ... that set_timesteps spaces evenly (float64) and shifts again.
    sigmas = _shifted(np.linspace(sigma_max * T, sigma_min * T, n) / T, float(shift)).astype(np.float32)
    timesteps = sigmas * np.float32(T)
    sigmas = np.concatenate([sigmas, np.zeros(1, np.float32)])
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(1.0),
        tables={"sigmas": jnp.asarray(sigmas)},
        options=FlowMatchOptions(stochastic_sampling=bool(cfg["stochastic_sampling"])),
    )


def init_state(x: jax.Array) -> tuple:
    return ()


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    return x


def update(
    sampler: Sampler,
    i: jax.Array,
    x: jax.Array,
    model_output: jax.Array,
    state: tuple,
    noise: jax.Array | None,
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: ``(x_next, x0_pred, state)``; ``model_output`` is the velocity ``noise - x0``."""
    sigmas = sampler.tables["sigmas"]
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    x0 = x - sigma * model_output
    if sampler.options.stochastic_sampling:
        x_next = (1.0 - sigma_next) * x0 + sigma_next * noise
    else:
        x_next = x + (sigma_next - sigma) * model_output
    return x_next, x0, state
