"""The "Diffusion Models from Scratch" objective of the Hugging Face Diffusion Models Class (unit 1).

Before any paper's noise schedule, the course corrupts an image by mixing it linearly with uniform noise::

    noisy = x * (1 - amount) + noise * amount,   amount ~ U[0, 1] per image,   noise ~ U[0, 1) per pixel

trains a small network to predict the clean ``x`` from ``noisy`` with a mean squared error, and samples by
starting from uniform noise and moving ``1 / (n_steps - i)`` of the way towards the prediction at step ``i``.

Everything here is a pure function of explicit arrays and PRNG keys (the course draws its noise inside
``corrupt`` with ``torch.rand_like``; here the caller passes ``noise`` so the function is deterministic).
Images are NHWC float32. The course feeds MNIST in ``[0, 1]``; any range works, as long as sampling starts
from the same ``U[0, 1)`` noise that training mixed in (:func:`from_scratch_noise`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.guidance import LossGuidance
from jaxdiff.losses import TrainingLoss

__all__ = ["corrupt", "from_scratch_noise", "make_from_scratch_loss", "from_scratch_sample"]

# apply_fn(params, x, t, class_labels=None, key=None) -> y, the contract of jaxdiff.models.functional.
ApplyFn = Callable[..., jax.Array]


def corrupt(x: jax.Array, amount: jax.Array, noise: jax.Array) -> jax.Array:
    """Mix images with noise: ``x * (1 - amount) + noise * amount``.

    Args:
      x: clean images ``[B, H, W, C]``.
      amount: corruption amount per image ``[B]`` (or a scalar) in ``[0, 1]``: 0 returns ``x``, 1 returns
        ``noise``.
      noise: ``x``'s shape; the course uses ``U[0, 1)`` noise (:func:`from_scratch_noise`).

    Returns:
      The corrupted images, ``x``'s shape and the promoted dtype of the inputs.
    """
    x = jnp.asarray(x)
    amount = jnp.asarray(amount)
    noise = jnp.asarray(noise)
    if noise.shape != x.shape:
        raise UserError(f"corrupt: noise shape {noise.shape} must equal the images' shape {x.shape}")
    if amount.ndim == 1:
        if x.ndim == 0 or amount.shape[0] != x.shape[0]:
            raise UserError(
                f"corrupt: amount shape {amount.shape} must be [B] with B = {x.shape[:1]} (or a scalar)"
            )
        # [B] -> [B, 1, 1, 1]: one amount per image, shared by its pixels and channels (NHWC).
        amount = amount.reshape((-1,) + (1,) * (x.ndim - 1))
    elif amount.ndim != 0:
        raise UserError(f"corrupt: amount shape {amount.shape} must be [B] or a scalar")
    return x * (1 - amount) + noise * amount


def from_scratch_noise(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """The course's noise, ``torch.rand_like``'s twin: ``U[0, 1)`` of ``shape`` (NHWC)."""
    return jax.random.uniform(key, shape, dtype)


def make_from_scratch_loss() -> TrainingLoss:
    """The course's training objective: predict the clean image from a randomly corrupted one (MSE).

    Returns ``loss_fn(apply_fn, params, x0, key, class_labels=None) -> (loss, aux)``, the same signature as
    :func:`jaxdiff.losses.make_diffusion_loss`'s:

    - ``x0``: clean images ``[B, H, W, C]`` float32.
    - ``key`` is split in three: the amounts ``U[0, 1]`` ``[B]``, the noise ``U[0, 1)`` (``x0``'s shape) and
      the model's dropout key, in that order.
    - The model gets timestep 0 for every image: the course's BasicUNet has no timestep input and its
      UNet2DModel variant passes ``t=0``, so the model must infer the amount from the image itself.
    - ``loss`` is the float32 mean over all elements of ``(pred - x0) ** 2`` (``nn.MSELoss()``); ``aux``
      holds ``"mse"`` (the same value) and ``"mean_amount"``.
    """

    def draw(key: jax.Array, x0: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        amount_key, noise_key, dropout_key = jax.random.split(key, 3)
        amount = jax.random.uniform(amount_key, x0.shape[:1], jnp.float32)
        return {"amount": amount, "noise": from_scratch_noise(noise_key, x0.shape, jnp.float32)}, dropout_key

    def evaluate(
        apply_fn: ApplyFn,
        params: Any,
        x0: jax.Array,
        draws: dict[str, jax.Array],
        dropout_key: jax.Array,
        class_labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        amount = draws["amount"]
        noisy = corrupt(x0, amount, draws["noise"])
        t = jnp.zeros(x0.shape[:1], jnp.int32)
        pred = apply_fn(params, noisy, t, class_labels, key=dropout_key)
        mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - x0.astype(jnp.float32)))
        return mse, {"mse": mse, "mean_amount": jnp.mean(amount)}

    return TrainingLoss(draw=draw, evaluate=evaluate)


def from_scratch_sample(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    n_steps: int,
    *,
    return_intermediates: bool = False,
    loss_guidance: LossGuidance | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """The course's simple iterative sampler, as one ``lax.scan``.

    At step ``i = 0 .. n_steps - 1`` the model predicts the clean image from ``x`` (timestep 0, no dropout)
    and ``x`` moves ``1 / (n_steps - i)`` of the way towards it::

        x <- x * (1 - 1 / (n_steps - i)) + pred * (1 / (n_steps - i))

    so the last step lands exactly on the last prediction.

    Args:
      apply_fn, params: the model (``jaxdiff.models.functional``).
      x: the start ``[B, H, W, C]``, usually :func:`from_scratch_noise`.
      n_steps: number of model evaluations, a Python int >= 1.
      return_intermediates: also return ``{"x": [n_steps, B, H, W, C], "pred": [n_steps, B, H, W, C]}``,
        the model input and its prediction at every step (the course's ``step_history`` without the final
        output, and ``pred_output_history``).
      loss_guidance: at each step, move ``x`` along the negative gradient (through the model) of a loss
        on the prediction, then mix the moved ``x`` with the prediction made at the unmoved one
        (``jaxdiff.guidance.LossGuidance.guide``).

    Returns:
      The final images (``x``'s shape, float32), or ``(images, intermediates)``.
    """
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise UserError(f"from_scratch_sample: n_steps={n_steps!r} must be an int >= 1")
    x = jnp.asarray(x, jnp.float32)
    t = jnp.zeros((x.shape[0],), jnp.int32)

    def predict(x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        pred = apply_fn(params, x_t, t).astype(jnp.float32)
        return pred, pred

    def step(x, i):
        if loss_guidance is None:
            x_step, pred = x, predict(x)[1]
        else:
            x_step, pred = loss_guidance.guide(x, t, predict)
        mix_factor = 1.0 / (n_steps - i).astype(jnp.float32)
        return x_step * (1 - mix_factor) + pred * mix_factor, {"x": x, "pred": pred}

    x, history = jax.lax.scan(step, x, jnp.arange(n_steps, dtype=jnp.int32))
    return (x, history) if return_intermediates else x
