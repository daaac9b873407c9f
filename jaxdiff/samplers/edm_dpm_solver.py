"""Multistep DPM-Solver++ on EDM's noise path, as diffusers' ``EDMDPMSolverMultistepScheduler``:
``algorithm_type`` "dpmsolver++" (orders 1-3) or "sde-dpmsolver++" (orders 1-2), "midpoint" / "heun"
solver types, ``lower_order_final``, ``euler_at_final`` and ``final_sigmas_type``.

The solver is ``dpm_solver``'s (its ``multistep_update``) with ``alpha_t = 1`` and ``sigma_t = sigma``
(``x = x0 + sigma n``), so ``lambda = -log(sigma)``; the data prediction is EDM's preconditioned
denoiser ``c_skip x + c_out F`` (``samplers/edm.py``), thresholded if configured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers import dpm_solver, edm
from jaxdiff.samplers._common import THRESHOLDING_DEFAULTS, check_choice, check_num_steps
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.thresholding import X0Clipping, clip_x0

KIND = "edm_dpmsolver++"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "EDMDPMSolverMultistepScheduler"

# EDMDPMSolverMultistepScheduler.__init__ defaults in diffusers 0.42.1 (in its order).
DEFAULTS: dict[str, Any] = {
    **{key: edm.EDM_DEFAULTS[key] for key in ("sigma_min", "sigma_max", "sigma_data", "sigma_schedule")},
    **{key: edm.EDM_DEFAULTS[key] for key in ("num_train_timesteps", "prediction_type", "rho")},
    "solver_order": 2,
    **THRESHOLDING_DEFAULTS,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
}
CALL_DEFAULTS: dict[str, Any] = {}
IMPLEMENTED = frozenset(DEFAULTS)
# diffusers maps "deis" to "dpmsolver++", and the UniPC / DEIS solver types to "midpoint".
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "deis")
_SOLVER_TYPE_ALIASES = {"midpoint": "midpoint", "heun": "heun", "logrho": "midpoint", "bh1": "midpoint",
                        "bh2": "midpoint"}  # fmt: skip

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="edm_dpm++",
        class_name=CLASS_NAME,
        aliases=("edm-dpm++", "edm_dpmsolver++", "edm-dpmsolver++", "edm_dpm++2m"),
        discrete_schedule=False,
    ),
    SamplerEntry(
        name="edm_dpm++sde",
        class_name=CLASS_NAME,
        aliases=("edm-dpm++sde", "edm_sde-dpmsolver++", "edm_dpm++2m_sde"),
        options={"algorithm_type": "sde-dpmsolver++"},
        stochastic=True,
        discrete_schedule=False,
    ),
)


@dataclasses.dataclass(frozen=True)
class EDMDPMSolverOptions:
    solver_order: int
    solver_type: str
    clipping: X0Clipping
    sde: bool = False  # algorithm_type="sde-dpmsolver++"
    kind: ClassVar[str] = KIND

    @property
    def stochastic(self) -> bool:
        return self.sde


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The EDM DPM-Solver++ sampler for a complete, validated ``EDMDPMSolverMultistepScheduler`` config."""
    edm.check_config(cfg)
    check_choice(cfg, "solver_order", (1, 2, 3))
    check_choice(cfg, "algorithm_type", ALGORITHM_TYPES)
    check_choice(cfg, "solver_type", tuple(_SOLVER_TYPE_ALIASES))
    if cfg["algorithm_type"] == "deis" and cfg["final_sigmas_type"] == "zero":
        raise UserError("algorithm_type='deis' needs final_sigmas_type='sigma_min' (as in diffusers)")
    sde = cfg["algorithm_type"] == "sde-dpmsolver++"
    if sde and cfg["solver_order"] == 3:
        # diffusers' third-order step has no SDE form here (it fails when it gets there).
        raise UserError("solver_order=3 is not one of 1, 2 with algorithm_type='sde-dpmsolver++'")
    n = check_num_steps(num_inference_steps, int(cfg["num_train_timesteps"]), at_most_train=False)

    sigmas = edm.inference_sigmas(cfg, n, float64_ramp=False)
    timesteps = edm.precondition_noise(sigmas)
    sigma_last = np.float32(cfg["sigma_min"]) if cfg["final_sigmas_type"] == "sigma_min" else np.float32(0.0)
    sigma_data = float(cfg["sigma_data"])
    c_skip, c_out = edm.output_scales(sigmas, sigma_data, cfg["prediction_type"])
    tables = {
        "sigmas": np.concatenate([sigmas, [sigma_last]]).astype(np.float32),
        "order": dpm_solver.step_orders(n, cfg),
        "c_in": edm.input_scale(sigmas, sigma_data),
        "c_skip": c_skip,
        "c_out": c_out,
    }
    options = EDMDPMSolverOptions(
        solver_order=int(cfg["solver_order"]),
        solver_type=_SOLVER_TYPE_ALIASES[cfg["solver_type"]],
        clipping=X0Clipping.from_config(cfg),
        sde=sde,
    )
    return Sampler(
        timesteps=jnp.asarray(timesteps),
        init_noise_sigma=jnp.float32(edm.init_noise_sigma(cfg)),
        tables={name: jnp.asarray(table) for name, table in tables.items()},
        options=options,
    )


def edm_alpha_sigma(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha_t, sigma_t) = (1, sigma)``: EDM's inputs are not scaled down by the solver."""
    return jnp.ones_like(sigma), sigma


def init_state(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return dpm_solver.init_state(x)


scale_model_input = edm.scale_model_input


def update(
    sampler: Sampler,
    i: jax.Array,
    x: jax.Array,
    model_output: jax.Array,
    state: tuple,
    noise: jax.Array | None,
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: ``(x_prev, x0_pred, (m0, m1))``; ``noise`` (standard normal) only for the SDE variant."""
    tables = sampler.tables
    m0 = clip_x0(tables["c_skip"][i] * x + tables["c_out"][i] * model_output, sampler.options.clipping)
    return dpm_solver.multistep_update(sampler, i, x, m0, state, noise, edm_alpha_sigma)
