"""Multistep DPM-Solver++ as diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``
(the ODE solver) or ``"sde-dpmsolver++"`` (its SDE variant, Lu et al. 2022b, Sec. 5: DPM-Solver++(2M) SDE,
which adds fresh noise at each step), solver orders 1 to 3. Lu et al. 2022a is DPM-Solver
(arXiv:2206.00927), 2022b DPM-Solver++ (2211.01095).

Notation: ``sigma`` is the VE noise level ``sqrt((1 - alpha_bar) / alpha_bar)`` diffusers tabulates;
the VP coefficients are ``alpha = 1 / sqrt(1 + sigma^2)``, ``sigma_vp = sigma * alpha`` and the half
log-SNR is ``lambda = log(alpha) - log(sigma_vp)``. The solver integrates the data prediction ``x0``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.samplers._common import (
    SCHEDULE_DEFAULTS,
    THRESHOLDING_DEFAULTS,
    check_choice,
    check_num_steps,
    train_alphas_cumprod,
)
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.registry import SamplerEntry
from jaxdiff.samplers.thresholding import PREDICTION_TYPES, X0Clipping, clip_x0
from jaxdiff.samplers.timesteps import (
    dpm_spaced_timesteps,
    exponential_sigmas,
    karras_sigmas,
    lu_lambdas,
    sigma_to_t,
    train_sigmas,
)

KIND = "dpmsolver++"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "DPMSolverMultistepScheduler"

# DPMSolverMultistepScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    **THRESHOLDING_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -float("inf"),
    "variance_type": None,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
CALL_DEFAULTS: dict[str, Any] = {}
# Keys that may differ from their default (algorithm_type: see ALGORITHM_TYPES); the others (noise-prediction
# and flow variants, beta sigmas, learned
# variance, dynamic shifting) are not implemented and must stay at their defaults.
IMPLEMENTED = frozenset(
    {
        "num_train_timesteps",
        "algorithm_type",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "solver_order",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_lu_lambdas",
        "final_sigmas_type",
        "lambda_min_clipped",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
    }
)
# The data-prediction algorithms ("dpmsolver" and "sde-dpmsolver", the noise-prediction ones, are not
# implemented; diffusers maps "deis" to "dpmsolver++").
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "deis")
# diffusers maps the UniPC / DEIS solver types to "midpoint".
_SOLVER_TYPE_ALIASES = {
    "midpoint": "midpoint",
    "heun": "heun",
    "logrho": "midpoint",
    "bh1": "midpoint",
    "bh2": "midpoint",
}

# Its short names (samplers/catalog.py registers them).
ENTRIES = (
    SamplerEntry(
        name="dpm++",
        class_name=CLASS_NAME,
        aliases=("dpmsolver++", "dpm-solver++", "dpm++2m"),
    ),
    SamplerEntry(
        name="dpm++sde",
        class_name=CLASS_NAME,
        aliases=("sde-dpmsolver++", "dpm++2m-sde", "dpm++2msde"),
        options={"algorithm_type": "sde-dpmsolver++"},
        stochastic=True,
    ),
)


@dataclasses.dataclass(frozen=True)
class DPMSolverOptions:
    prediction_type: str
    solver_order: int
    solver_type: str
    clipping: X0Clipping
    sde: bool = False  # algorithm_type="sde-dpmsolver++"
    kind: ClassVar[str] = KIND

    @property
    def stochastic(self) -> bool:
        return self.sde


def step_orders(n: int, cfg: Mapping[str, Any]) -> np.ndarray:
    """int32 ``[n]``: the order diffusers uses at each of the ``n`` steps (warm-up and lower-order final
    steps), from ``cfg``'s ``solver_order``, ``lower_order_final``, ``euler_at_final`` and
    ``final_sigmas_type`` (also the EDM variant's)."""
    order, lower_final = int(cfg["solver_order"]), bool(cfg["lower_order_final"])
    orders = []
    for i in range(n):
        done = min(i, order)  # diffusers' lower_order_nums
        final = i == n - 1 and (
            cfg["euler_at_final"] or (lower_final and n < 15) or cfg["final_sigmas_type"] == "zero"
        )
        second = i == n - 2 and lower_final and n < 15
        if order == 1 or done < 1 or final:
            orders.append(1)
        elif order == 2 or done < 2 or second:
            orders.append(2)
        else:
            orders.append(3)
    return np.asarray(orders, np.int32)


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The DPM-Solver++ sampler for a complete, validated ``DPMSolverMultistepScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    check_choice(cfg, "solver_order", (1, 2, 3))
    check_choice(cfg, "solver_type", tuple(_SOLVER_TYPE_ALIASES))
    check_choice(cfg, "final_sigmas_type", ("zero", "sigma_min"))
    check_choice(cfg, "algorithm_type", ALGORITHM_TYPES)
    if cfg["use_karras_sigmas"] + cfg["use_exponential_sigmas"] + cfg["use_lu_lambdas"] > 1:
        raise UserError("only one of use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas can be true")
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)

    alphas_cumprod = train_alphas_cumprod(cfg)
    if cfg["rescale_betas_zero_snr"]:
        alphas_cumprod[-1] = 2.0**-24  # diffusers: close to 0 so that the first sigma is finite
    # Clip the steps whose lambda falls below lambda_min_clipped (for the cosine schedule).
    alpha_vp, sigma_vp = np.sqrt(alphas_cumprod), np.sqrt(np.float32(1.0) - alphas_cumprod)
    lambdas = np.log(alpha_vp) - np.log(sigma_vp)
    last_timestep = T - int(np.searchsorted(lambdas[::-1], cfg["lambda_min_clipped"]))
    timesteps = dpm_spaced_timesteps(cfg["timestep_spacing"], T, n, last_timestep, int(cfg["steps_offset"]))

    sigmas = train_sigmas(alphas_cumprod)
    log_sigmas = np.log(sigmas)
    round_t = cfg["beta_schedule"] != "squaredcos_cap_v2"
    if cfg["use_karras_sigmas"]:
        sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
        timesteps = timesteps.round() if round_t else timesteps
    elif cfg["use_lu_lambdas"]:
        sigmas = np.exp(lu_lambdas(log_sigmas[-1].item(), log_sigmas[0].item(), n))
        timesteps = sigma_to_t(sigmas, log_sigmas)
        timesteps = timesteps.round() if round_t else timesteps
    elif cfg["use_exponential_sigmas"]:
        sigmas = exponential_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    if cfg["final_sigmas_type"] == "sigma_min":
        sigma_last = np.sqrt((np.float32(1.0) - alphas_cumprod[0]) / alphas_cumprod[0])
    else:
        sigma_last = 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    timesteps = timesteps.astype(np.int64)  # truncates, as torch's .to(int64)
    n = len(timesteps)

    options = DPMSolverOptions(
        prediction_type=cfg["prediction_type"],
        solver_order=int(cfg["solver_order"]),
        solver_type=_SOLVER_TYPE_ALIASES[cfg["solver_type"]],
        clipping=X0Clipping.from_config(cfg),
        sde=cfg["algorithm_type"] == "sde-dpmsolver++",
    )
    return Sampler(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        init_noise_sigma=jnp.float32(1.0),
        tables={"sigmas": jnp.asarray(sigmas), "order": jnp.asarray(step_orders(n, cfg))},
        options=options,
    )


def alpha_sigma(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """VP ``(alpha_t, sigma_t)`` of a VE noise level: ``1 / sqrt(1 + sigma^2)`` and ``sigma * alpha_t``."""
    alpha = 1 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


# The ``(alpha_t, sigma_t)`` of a tabulated noise level ``sigma``: ``alpha_sigma`` for the VP models here,
# ``(1, sigma)`` for EDM (whose inputs are scaled before the model, ``samplers/edm.py``). Every update
# below takes one, so that both solvers share their formulas.
AlphaSigmaFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def half_log_snr(sigma: jax.Array, alpha_sigma_fn: AlphaSigmaFn = alpha_sigma) -> jax.Array:
    """``lambda = log(alpha_t) - log(sigma_t)``; ``+inf`` at ``sigma = 0``."""
    alpha, sigma_t = alpha_sigma_fn(sigma)
    return jnp.log(alpha) - jnp.log(sigma_t)


def data_prediction(
    model_output: jax.Array, x: jax.Array, sigma: jax.Array, options: DPMSolverOptions
) -> jax.Array:
    """The model's ``x0`` prediction at noise level ``sigma`` (thresholded if configured)."""
    alpha_t, sigma_t = alpha_sigma(sigma)
    if options.prediction_type == "epsilon":
        x0 = (x - sigma_t * model_output) / alpha_t
    elif options.prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction
        x0 = alpha_t * x - sigma_t * model_output
    return clip_x0(x0, options.clipping)


def first_order_update(
    x: jax.Array,
    m0: jax.Array,
    sigma_s: jax.Array,
    sigma_t: jax.Array,
    alpha_sigma_fn: AlphaSigmaFn = alpha_sigma,
) -> jax.Array:
    """First-order DPM-Solver++, which is DDIM (Lu et al. 2022b, Sec. 4).

    ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0`` with ``h = lambda_t - lambda_s``.
    """
    alpha_t, sig_t = alpha_sigma_fn(sigma_t)
    _, sig_s = alpha_sigma_fn(sigma_s)
    h = half_log_snr(sigma_t, alpha_sigma_fn) - half_log_snr(sigma_s, alpha_sigma_fn)
    return (sig_t / sig_s) * x - (alpha_t * (jnp.exp(-h) - 1.0)) * m0


def second_order_update(
    x: jax.Array,
    m0: jax.Array,
    m1: jax.Array,
    sigma_s0: jax.Array,
    sigma_s1: jax.Array,
    sigma_t: jax.Array,
    solver_type: str,
    alpha_sigma_fn: AlphaSigmaFn = alpha_sigma,
) -> jax.Array:
    """Multistep DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2).

    ``D1 = (m0 - m1) / r0`` with ``r0 = h_prev / h``; "midpoint" adds ``-0.5 alpha_t (e^-h - 1) D1``,
    "heun" adds ``alpha_t ((e^-h - 1) / h + 1) D1``.
    """
    alpha_t, sig_t = alpha_sigma_fn(sigma_t)
    _, sig_s0 = alpha_sigma_fn(sigma_s0)
    lambda_t, lambda_s0 = half_log_snr(sigma_t, alpha_sigma_fn), half_log_snr(sigma_s0, alpha_sigma_fn)
    lambda_s1 = half_log_snr(sigma_s1, alpha_sigma_fn)
    h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
    r0 = h_0 / h
    d0, d1 = m0, (1.0 / r0) * (m0 - m1)
    if solver_type == "midpoint":
        return (
            (sig_t / sig_s0) * x
            - (alpha_t * (jnp.exp(-h) - 1.0)) * d0
            - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * d1
        )
    return (
        (sig_t / sig_s0) * x
        - (alpha_t * (jnp.exp(-h) - 1.0)) * d0
        + (alpha_t * ((jnp.exp(-h) - 1.0) / h + 1.0)) * d1
    )


def third_order_update(
    x: jax.Array,
    m0: jax.Array,
    m1: jax.Array,
    m2: jax.Array,
    sigma_s0: jax.Array,
    sigma_s1: jax.Array,
    sigma_s2: jax.Array,
    sigma_t: jax.Array,
    alpha_sigma_fn: AlphaSigmaFn = alpha_sigma,
) -> jax.Array:
    """Third-order multistep update in data-prediction form (Lu et al. 2022a/b; diffusers' "3M")."""
    alpha_t, sig_t = alpha_sigma_fn(sigma_t)
    _, sig_s0 = alpha_sigma_fn(sigma_s0)
    lambda_t, lambda_s0 = half_log_snr(sigma_t, alpha_sigma_fn), half_log_snr(sigma_s0, alpha_sigma_fn)
    lambda_s1, lambda_s2 = half_log_snr(sigma_s1, alpha_sigma_fn), half_log_snr(sigma_s2, alpha_sigma_fn)
    h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    return (
        (sig_t / sig_s0) * x
        - (alpha_t * (jnp.exp(-h) - 1.0)) * m0
        + (alpha_t * ((jnp.exp(-h) - 1.0) / h + 1.0)) * d1
        - (alpha_t * ((jnp.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
    )


def sde_update(
    x: jax.Array,
    ms: tuple[jax.Array, jax.Array, jax.Array],
    sigmas: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    noise: jax.Array,
    order: int,
    solver_type: str,
    alpha_sigma_fn: AlphaSigmaFn = alpha_sigma,
) -> jax.Array:
    """One multistep DPM-Solver++ SDE step of order 1, 2 or 3 (Lu et al. 2022b, Sec. 5; diffusers'
    "sde-dpmsolver++"): the ODE step's exponential integrator with ``e^-h`` replaced by ``e^-2h`` in the
    data terms, plus ``sigma_t sqrt(1 - e^-2h)`` fresh noise.

    Args:
      x: float32 ``[B, ...]`` at ``sigma_s0``.
      ms: the data predictions ``(m0, m1, m2)`` at ``(sigma_s0, sigma_s1, sigma_s2)`` (newest first).
      sigmas: VE ``(sigma_t, sigma_s0, sigma_s1, sigma_s2)``.
      noise: standard normal, ``x``'s shape.
    """
    m0, m1, m2 = ms
    sigma_t, sigma_s0, sigma_s1, sigma_s2 = sigmas
    alpha_t, sig_t = alpha_sigma_fn(sigma_t)
    _, sig_s0 = alpha_sigma_fn(sigma_s0)
    lambda_t, lambda_s0 = half_log_snr(sigma_t, alpha_sigma_fn), half_log_snr(sigma_s0, alpha_sigma_fn)
    h = lambda_t - lambda_s0
    decay = 1.0 - jnp.exp(-2.0 * h)
    x_t = (sig_t / sig_s0 * jnp.exp(-h)) * x + (alpha_t * decay) * m0
    if order == 2:
        r0 = (lambda_s0 - half_log_snr(sigma_s1, alpha_sigma_fn)) / h
        d1 = (1.0 / r0) * (m0 - m1)
        if solver_type == "midpoint":
            x_t = x_t + 0.5 * (alpha_t * decay) * d1
        else:
            x_t = x_t + (alpha_t * (decay / (-2.0 * h) + 1.0)) * d1
    elif order == 3:
        lambda_s1, lambda_s2 = half_log_snr(sigma_s1, alpha_sigma_fn), half_log_snr(sigma_s2, alpha_sigma_fn)
        r0, r1 = (lambda_s0 - lambda_s1) / h, (lambda_s1 - lambda_s2) / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        x_t = (
            x_t
            + (alpha_t * (decay / (-2.0 * h) + 1.0)) * d1
            + (alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        )
    return x_t + sig_t * jnp.sqrt(1.0 - jnp.exp(-2 * h)) * noise


def init_state(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two previous data predictions (``m1``, ``m2``); unused until filled."""
    return jnp.zeros_like(x), jnp.zeros_like(x)


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
    """Step ``i``: ``(x_prev, x0_pred, (m0, m1))``, with the solver order diffusers uses at step ``i``;
    ``noise`` (standard normal, ``x``'s shape) only for the SDE variant."""
    m0 = data_prediction(model_output, x, sampler.tables["sigmas"][i], sampler.options)
    return multistep_update(sampler, i, x, m0, state, noise)


def multistep_update(
    sampler: Sampler,
    i: jax.Array,
    x: jax.Array,
    m0: jax.Array,
    state: tuple,
    noise: jax.Array | None,
    alpha_sigma_fn: AlphaSigmaFn = alpha_sigma,
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i`` given its data prediction ``m0``: ``(x_prev, m0, (m0, m1))``.

    Reads ``sampler.tables["sigmas"]`` ``[N + 1]`` and ``["order"]`` ``[N]`` and the options'
    ``solver_order``, ``solver_type`` and ``sde``; shared with ``edm_dpm_solver``.
    """
    sigmas, options = sampler.tables["sigmas"], sampler.options
    m1, m2 = state
    # At i < 2 the history entries are unused (the order is then lower); clamp to stay in bounds.
    sigma_t, sigma_s0 = sigmas[i + 1], sigmas[i]
    sigma_s1, sigma_s2 = sigmas[jnp.maximum(i - 1, 0)], sigmas[jnp.maximum(i - 2, 0)]
    if options.sde:
        ms, step_sigmas = (m0, m1, m2), (sigma_t, sigma_s0, sigma_s1, sigma_s2)
        branches = [
            functools.partial(
                sde_update, x, ms, step_sigmas, noise, order, options.solver_type, alpha_sigma_fn
            )
            for order in range(1, options.solver_order + 1)
        ]
        x_prev = jax.lax.switch(sampler.tables["order"][i] - 1, branches)
        return x_prev, m0, (m0, m1)
    branches = [
        lambda: first_order_update(x, m0, sigma_s0, sigma_t, alpha_sigma_fn),
        lambda: second_order_update(
            x, m0, m1, sigma_s0, sigma_s1, sigma_t, options.solver_type, alpha_sigma_fn
        ),
        lambda: third_order_update(x, m0, m1, m2, sigma_s0, sigma_s1, sigma_s2, sigma_t, alpha_sigma_fn),
    ][: options.solver_order]
    x_prev = jax.lax.switch(sampler.tables["order"][i] - 1, branches)
    return x_prev, m0, (m0, m1)
