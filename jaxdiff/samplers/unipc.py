"""UniPC (Zhao et al. 2023, arXiv:2302.04867): a multistep predictor (UniP) and corrector (UniC) in the
exponential-integrator form of DPM-Solver, as diffusers' ``UniPCMultistepScheduler``.

Notation as in ``dpm_solver``: ``sigma`` is the VE noise level, ``alpha = 1 / sqrt(1 + sigma^2)``,
``sigma_vp = sigma * alpha``, ``lambda = log(alpha) - log(sigma_vp)``. With ``predict_x0`` the solver
integrates the data prediction ``m = x0`` (UniPC's "x0" variant), else the noise prediction.

At step ``i`` the model sees the predictor's ``x_i``; the corrector then replaces it by ``x_i^c`` (built from
``x_{i-1}^c`` and the model outputs up to ``i``, at order ``p_{i-1}``; skipped after the steps listed in
``disable_corrector``), and the predictor steps from ``x_i^c`` to ``x_{i+1}`` at order ``p_i``. Every
coefficient depends on the sigmas and orders only, so ``build`` tabulates them (float32, the arithmetic of
diffusers' ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``); the step is then a few
``axpy``s on the image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    sigma_to_t,
    train_sigmas,
)

KIND = "unipc"  # Sampler.kind, the key of its step function in samplers/scan.py
CLASS_NAME = "UniPCMultistepScheduler"

# UniPCMultistepScheduler.__init__ defaults in diffusers 0.42.1.
DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    **THRESHOLDING_DEFAULTS,
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "disable_corrector": [],
    "solver_p": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "final_sigmas_type": "zero",
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "sigma_min": None,
    "sigma_max": None,
    "shift_terminal": None,
}
CALL_DEFAULTS: dict[str, Any] = {}
# Not implemented (defaults only): another scheduler as predictor, beta sigmas, and the flow-matching
# variants (flow sigmas, their shift and dynamic shifting).
IMPLEMENTED = frozenset(DEFAULTS) - {
    "solver_p",
    "use_beta_sigmas",
    "use_flow_sigmas",
    "flow_shift",
    "use_dynamic_shifting",
    "time_shift_type",
    "shift_terminal",
}
# diffusers maps the DPM-Solver solver types to "bh2".
_SOLVER_TYPE_ALIASES = {"bh1": "bh1", "bh2": "bh2", "midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}

# Its short names (samplers/catalog.py registers them).
ENTRIES = (SamplerEntry(name="unipc", class_name=CLASS_NAME, aliases=("uni-pc", "unipc2m")),)


@dataclasses.dataclass(frozen=True)
class UniPCOptions:
    prediction_type: str
    predict_x0: bool
    solver_order: int
    clipping: X0Clipping
    kind: ClassVar[str] = KIND
    stochastic: ClassVar[bool] = False


def _step_orders(n: int, solver_order: int, lower_order_final: bool) -> np.ndarray:
    """The predictor order ``p_i`` at each step: warm-up from 1, and lower at the end if asked."""
    return np.asarray(
        [min(solver_order, n - i if lower_order_final else solver_order, i + 1) for i in range(n)], np.int32
    )


def _vp(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 ``(alpha, sigma_vp, lambda)`` of VE sigmas (``lambda = +inf`` at ``sigma = 0``)."""
    sigma = np.asarray(sigma, np.float32)
    alpha = np.float32(1.0) / (sigma**2 + np.float32(1.0)) ** np.float32(0.5)
    sigma_vp = sigma * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma_vp)
    return alpha, sigma_vp, lam


def _coefficients(
    sigmas: np.ndarray, t: int, s0: int, history: list[int], order: int, corrector: bool, cfg: Mapping
) -> dict[str, np.ndarray]:
    """The coefficients of one UniP (``corrector=False``) or UniC update from index ``s0`` to ``t``.

    ``history`` are the sigma indices of the older model outputs (``order - 1`` of them, newest first).
    Returns float32 ``a``, ``b``, ``c`` (scalars), ``rk`` ``[2]`` and ``rho`` ``[3]`` (zero-padded) with
    ``x_t = a x - b m0 - c (sum_k rho_k (m_k - m0) / rk_k [+ rho_last (m_t - m0)])``.
    """
    f32 = np.float32
    alpha, sigma_vp, lam = _vp(sigmas)
    h = lam[t] - lam[s0]
    rks = [(lam[si] - lam[s0]) / h for si in history] + [f32(1.0)]
    hh = -h if cfg["predict_x0"] else h
    with np.errstate(invalid="ignore", divide="ignore"):
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - f32(1.0)
        b_h = hh if cfg["solver_type"] == "bh1" else np.expm1(hh)
        factorial, b = 1, []
        for i in range(1, order + 1):
            b.append(h_phi_k * f32(factorial) / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - f32(1.0) / f32(factorial)
    # float32 throughout, as diffusers' torch.linalg.solve.
    rks_arr = np.asarray(rks, np.float32)
    R = np.stack([rks_arr ** np.float32(i - 1) for i in range(1, order + 1)])
    b = np.asarray(b, np.float32)
    rho = np.zeros(3, np.float32)
    if corrector:
        rhos = [0.5] if order == 1 else np.linalg.solve(R, b)
        rho[: order - 1] = rhos[:-1]
        rho[2] = rhos[-1]
    elif order == 2:
        rho[0] = 0.5
    elif order == 3:
        rho[:2] = np.linalg.solve(R[:-1, :-1], b[:-1])
    rk = np.ones(2, np.float32)
    rk[: order - 1] = rks[:-1]
    if cfg["predict_x0"]:
        a, b_coef, c = sigma_vp[t] / sigma_vp[s0], alpha[t] * h_phi_1, alpha[t] * b_h
    else:
        a, b_coef, c = alpha[t] / alpha[s0], sigma_vp[t] * h_phi_1, sigma_vp[t] * b_h
    return {"a": f32(a), "b": f32(b_coef), "c": f32(c), "rk": rk, "rho": rho}


def build(cfg: Mapping[str, Any], num_inference_steps: int) -> Sampler:
    """The UniPC sampler for a complete, validated ``UniPCMultistepScheduler`` config."""
    check_choice(cfg, "prediction_type", PREDICTION_TYPES)
    check_choice(cfg, "solver_order", (1, 2, 3))
    check_choice(cfg, "solver_type", tuple(_SOLVER_TYPE_ALIASES))
    check_choice(cfg, "final_sigmas_type", ("zero", "sigma_min"))
    if cfg["use_karras_sigmas"] and cfg["use_exponential_sigmas"]:
        raise UserError("only one of use_karras_sigmas, use_exponential_sigmas can be true")
    disable = cfg["disable_corrector"]
    if not isinstance(disable, (list, tuple)) or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in disable
    ):
        raise UserError(f"disable_corrector={disable!r} must be a list of step indices")
    cfg = {**cfg, "solver_type": _SOLVER_TYPE_ALIASES[cfg["solver_type"]]}
    # With final_sigmas_type="zero" these make the last step to sigma = 0 multiply an infinite coefficient
    # by zero (diffusers returns NaN or inf, or fails to solve for the coefficients).
    at_zero = {
        "solver_type='bh1'": cfg["solver_type"] == "bh1",
        "predict_x0=False": not cfg["predict_x0"],
        f"lower_order_final=False with solver_order={cfg['solver_order']}": (
            not cfg["lower_order_final"] and cfg["solver_order"] > 1
        ),
    }
    for what, bad in at_zero.items():
        if bad and cfg["final_sigmas_type"] == "zero":
            raise UserError(
                f"UniPC with {what} needs final_sigmas_type='sigma_min' (diffusers: NaN at 'zero')"
            )
    T = int(cfg["num_train_timesteps"])
    n = check_num_steps(num_inference_steps, T, at_most_train=False)

    alphas_cumprod = train_alphas_cumprod(cfg)
    if cfg["rescale_betas_zero_snr"]:
        alphas_cumprod[-1] = 2.0**-24  # diffusers: close to 0 so that the first sigma is finite
    timesteps = dpm_spaced_timesteps(cfg["timestep_spacing"], T, n, T, int(cfg["steps_offset"]))
    sigmas = train_sigmas(alphas_cumprod)
    if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"]:
        log_sigmas = np.log(sigmas)
        sigma_min = cfg["sigma_min"] if cfg["sigma_min"] is not None else sigmas[0].item()
        sigma_max = cfg["sigma_max"] if cfg["sigma_max"] is not None else sigmas[-1].item()
        if cfg["use_karras_sigmas"]:
            sigmas = karras_sigmas(sigma_max, sigma_min, n)
            timesteps = sigma_to_t(sigmas, log_sigmas).round()
        else:
            sigmas = exponential_sigmas(sigma_max, sigma_min, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        sigma_last = sigmas[-1] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        if cfg["final_sigmas_type"] == "sigma_min":
            sigma_last = np.sqrt((np.float32(1.0) - alphas_cumprod[0]) / alphas_cumprod[0])
        else:
            sigma_last = 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    timesteps = timesteps.astype(np.int64)  # truncates, as torch's .to(int64)
    n = len(timesteps)

    orders = _step_orders(n, int(cfg["solver_order"]), bool(cfg["lower_order_final"]))
    predictor = [_coefficients(sigmas, i + 1, i, [i - k for k in range(1, p)], p, False, cfg)
                 for i, p in enumerate(orders)]  # fmt: skip
    # The corrector at step i >= 1 redoes step i - 1 at its order, with the model output at i.
    blank = {"a": np.float32(1.0), "b": np.float32(0.0), "c": np.float32(0.0), "rk": np.ones(2, np.float32),
             "rho": np.zeros(3, np.float32)}  # fmt: skip
    corrector = [blank] + [
        _coefficients(sigmas, i, i - 1, [i - 1 - k for k in range(1, q)], q, True, cfg)
        for i, q in zip(range(1, n), orders[:-1], strict=True)
    ]
    use_corrector = np.asarray([i > 0 and (i - 1) not in disable for i in range(n)])
    tables = {"sigmas": jnp.asarray(sigmas), "use_corrector": jnp.asarray(use_corrector)}
    for prefix, coefficients in (("p_", predictor), ("c_", corrector)):
        for name in ("a", "b", "c", "rk", "rho"):
            tables[prefix + name] = jnp.asarray(np.stack([co[name] for co in coefficients]), jnp.float32)
    options = UniPCOptions(
        prediction_type=cfg["prediction_type"],
        predict_x0=bool(cfg["predict_x0"]),
        solver_order=int(cfg["solver_order"]),
        clipping=X0Clipping.from_config(cfg),
    )
    return Sampler(
        timesteps=jnp.asarray(timesteps, jnp.int32),
        init_noise_sigma=jnp.float32(1.0),
        tables=tables,
        options=options,
    )


def _alpha_sigma(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    alpha = 1 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


def converted_output(
    model_output: jax.Array, x: jax.Array, sigma: jax.Array, options: UniPCOptions
) -> tuple[jax.Array, jax.Array]:
    """``(m, x0)``: what the solver integrates (``x0`` with ``predict_x0``, else epsilon) and the ``x0``
    prediction (thresholded if configured and ``predict_x0``)."""
    alpha_t, sigma_t = _alpha_sigma(sigma)
    if options.prediction_type == "epsilon":
        x0, eps = (x - sigma_t * model_output) / alpha_t, model_output
    elif options.prediction_type == "sample":
        x0, eps = model_output, (x - alpha_t * model_output) / sigma_t
    else:  # v_prediction
        x0, eps = alpha_t * x - sigma_t * model_output, alpha_t * model_output + sigma_t * x
    if options.predict_x0:
        x0 = clip_x0(x0, options.clipping)
        return x0, x0
    return eps, x0


def init_state(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(m_{i-1}, m_{i-2}, m_{i-3}, x_{i-1}^c)``: earlier solver outputs and the last corrected sample."""
    return jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros_like(x)


def scale_model_input(sampler: Sampler, i: jax.Array, x: jax.Array) -> jax.Array:
    return x


def update(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_output: jax.Array, state: tuple, noise: None
) -> tuple[jax.Array, jax.Array, tuple]:
    """Step ``i``: correct ``x_i`` (if enabled), then predict: ``(x_{i+1}, x0, state)``."""
    tables = sampler.tables
    m1, m2, m3, last = state
    m, x0 = converted_output(model_output, x, tables["sigmas"][i], sampler.options)

    def correct():
        rk, rho = tables["c_rk"][i], tables["c_rho"][i]
        residual = rho[0] * ((m2 - m1) / rk[0]) + rho[1] * ((m3 - m1) / rk[1])
        step = residual + rho[2] * (m - m1)
        return tables["c_a"][i] * last - tables["c_b"][i] * m1 - tables["c_c"][i] * step

    x = jax.lax.cond(tables["use_corrector"][i], correct, lambda: x)
    rk, rho = tables["p_rk"][i], tables["p_rho"][i]
    residual = rho[0] * ((m1 - m) / rk[0]) + rho[1] * ((m2 - m) / rk[1])
    x_next = tables["p_a"][i] * x - tables["p_b"][i] * m - tables["p_c"][i] * residual
    return x_next, x0, (m, m1, m2, x)
