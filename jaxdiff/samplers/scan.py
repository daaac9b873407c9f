"""The sampling loop: every sampler's steps in one ``jax.lax.scan``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.guidance import LossGuidance
from jaxdiff.samplers.base import Sampler, step_noise
from jaxdiff.samplers.catalog import BY_KIND

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def recorded_steps(num_steps: int, every: int) -> np.ndarray:
    """The step indices ``sample(..., intermediates_every=every)`` records: 0, k, 2k, ... and the last."""
    steps = np.arange(0, num_steps, every)
    return steps if steps[-1] == num_steps - 1 else np.append(steps, num_steps - 1)


def sample(
    sampler: Sampler,
    model_fn: ModelFn,
    x_T: jax.Array,
    key: jax.Array | None = None,
    *,
    intermediates_every: int | None = None,
    loss_guidance: LossGuidance | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Run the reverse process from noise to data, as a diffusers pipeline would.

    ``x = x_T * init_noise_sigma``; then for each ``t`` in ``sampler.timesteps``:
    ``x = step(model_fn(scale_model_input(x), t), x)``. Pure and jit-able (``sampler`` is a pytree;
    ``model_fn`` and ``intermediates_every`` are static); vmap it over a leading group axis of
    ``x_T`` and ``key`` if needed; a batch-sharded ``x_T`` gives the same result as an unsharded one.

    Args:
      sampler: from ``from_diffusers_config``.
      model_fn: ``model_fn(x, t) -> model output`` with ``x`` ``[B, H, W, C]`` (already scaled by
        ``scale_model_input``) and ``t`` ``[B]`` (``sampler.timesteps``' dtype), the values diffusers
        passes to the UNet. Its output is read as epsilon, sample or v per the sampler's prediction_type
        (for EDM: the network output ``F`` its preconditioning turns into the denoised sample).
      x_T: standard normal noise ``[B, H, W, C]`` (any ``[B, ...]`` shape works).
      key: PRNG key for the per-step noise of stochastic samplers (``step_noise(key, i, shape)`` at
        step ``i``); may be None for deterministic ones.
      intermediates_every: if ``k`` is given, also record the input ``x_t`` and the predicted ``x_0``
        at steps ``0, k, 2k, ...`` and at the last step (``recorded_steps``).
      loss_guidance: steer each step with a loss on the predicted ``x_0``: the model output at ``x``, the
        ``x_0`` of this iteration's update (with the current state, which is not advanced by it), the
        gradient of the loss with respect to ``x`` through both, then ``x <- x - scale * grad`` and the
        iteration's update from the moved ``x`` with the same model output
        (``jaxdiff.guidance.LossGuidance``; the course's order of operations). Every iteration is guided,
        except the correction iterations of second-order samplers (Heun, EDM's Algorithm 2: their module's
        ``first_stage(sampler, i)`` is False there): a correction re-evaluates the model at the predicted
        point but steps from the stage's start, so a move there would not carry forward (it would only
        tilt the averaged slope, against the loss). The recorded ``x_t`` is the unmoved input.

    Returns:
      ``x_0`` float32 with ``x_T``'s shape; with ``intermediates_every``, ``(x_0, intermediates)`` where
      ``intermediates = {"x_t": [M, B, ...], "pred_x0": [M, B, ...], "timesteps": [M]}``.
    """
    kind = BY_KIND[sampler.kind]
    stochastic = sampler.stochastic
    if stochastic and key is None:
        raise UserError(f"the {sampler.kind} sampler is stochastic: pass a PRNG key")
    every = intermediates_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise UserError(f"intermediates_every={intermediates_every!r} must be a positive integer or None")
    num_steps = sampler.num_steps
    x = jnp.asarray(x_T, jnp.float32) * sampler.init_noise_sigma
    batch = x.shape[:1]
    if every is not None:
        num_recorded = len(recorded_steps(num_steps, every))
        record = {"x_t": jnp.zeros((num_recorded, *x.shape)), "pred_x0": jnp.zeros((num_recorded, *x.shape))}
    else:
        record = None

    def body(carry, i):
        x, state, record = carry
        t = jnp.broadcast_to(sampler.timesteps[i], batch)
        noise = step_noise(key, i, x.shape) if stochastic else None

        def output_at(x_t: jax.Array) -> jax.Array:
            return model_fn(kind.scale_model_input(sampler, i, x_t), t).astype(jnp.float32)

        if loss_guidance is None:
            x_step, model_output = x, output_at(x)
        else:

            def predict(x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
                out = output_at(x_t)
                return kind.update(sampler, i, x_t, out, state, noise)[1], out

            def guided() -> tuple[jax.Array, jax.Array]:
                return loss_guidance.guide(x, t, predict)

            first_stage = getattr(kind, "first_stage", None)
            if first_stage is None:
                x_step, model_output = guided()
            else:  # a second-order sampler: its correction iterations are not guided
                x_step, model_output = jax.lax.cond(
                    first_stage(sampler, i), guided, lambda: (x, output_at(x))
                )
        x_prev, x0, state = kind.update(sampler, i, x_step, model_output, state, noise)
        if record is not None:
            # Slot ceil(i / k) is last written at step i = slot * k (or at the final step).
            slot = (i + every - 1) // every
            record = {"x_t": record["x_t"].at[slot].set(x), "pred_x0": record["pred_x0"].at[slot].set(x0)}
        return (x_prev, state, record), None

    init = (x, kind.init_state(x), record)
    (x0, _, record), _ = jax.lax.scan(body, init, jnp.arange(num_steps))
    if record is None:
        return x0
    record["timesteps"] = sampler.timesteps[recorded_steps(num_steps, every)]
    return x0, record
