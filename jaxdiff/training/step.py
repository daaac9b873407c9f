"""The train step: one ``jax.jit`` over the mesh, with explicit shardings and the state donated.

``train_step(state, batch) -> (state, metrics)``:

- ``batch``: ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}`` global arrays, split over the
  devices (``mesh.batch_sharding``); ``B`` is the global batch size.
- with ``cond_drop_prob > 0`` each label becomes ``null_label`` with that probability
  (``jaxdiff.training.label_dropout``), coins drawn from the step's key over the global batch, before the
  batch is split into passes;
- the loss draws its timesteps / noise / dropout from ``fold_in(state.rng, state.step)`` over the *global*
  batch shape (JAX's partitionable threefry gives the same numbers for any sharding), so 1 and N devices
  compute the same step up to the summation order of the gradient's all-reduce;
- ``passes > 1`` splits each device's slice of the batch into that many equal microbatches
  (``jaxdiff.execution.passes.take_pass``) and runs the forward and backward passes one after another,
  averaging their gradients: the same update (the loss's randomness is drawn for the whole batch first),
  up to float summation order, in a smaller working set. The loop is unrolled (XLA:CPU ran it far slower
  as a ``lax.scan``, see benchmarks/RESULTS.md). With dropout the masks are drawn per pass.
- ``metrics``: float32 scalars ``loss``, ``grad_norm`` (before clipping), ``lr`` (used by this update),
  ``ema_decay``, and bool ``finite``. A step whose loss or gradient is not finite leaves the state
  unchanged (``finite`` is False): a NaN never reaches the parameters, the EMA or a checkpoint, and the
  train loop stops with the step number.

Mixed precision is the model's business: ``train.mixed_precision="bf16"`` builds the model with bfloat16
compute and float32 parameters (``create_model(dtype=jnp.bfloat16)``); ``apply_fn`` returns float32, and the
loss, the gradients, AdamW and the EMA stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff.execution.passes import take_pass
from jaxdiff.losses import TrainingLoss
from jaxdiff.objectives import get_objective
from jaxdiff.training.label_dropout import drop_labels
from jaxdiff.training.state import TrainState

__all__ = ["make_loss_fn", "make_train_step"]

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
TrainStepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def make_loss_fn(config: Any) -> TrainingLoss:
    """The loss of the run's objective (``jaxdiff.objectives``): ``config`` is a run config (its
    ``diffusion`` section is read) or a ``diffusion`` section itself (a mapping or ``ConfigDict``).

    Returns ``loss_fn(apply_fn, params, x0, key, class_labels=None) -> (loss, aux)``, a ``TrainingLoss``.
    """
    diffusion = config.diffusion if hasattr(config, "diffusion") else config
    diffusion = diffusion.to_dict() if hasattr(diffusion, "to_dict") else dict(diffusion)
    return get_objective(diffusion.get("objective", "ddpm")).make_loss(diffusion)


def make_train_step(
    *,
    apply_fn: Callable[..., jax.Array],
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    ema_update: Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]],
    state_sharding: Any,
    batch_sharding: NamedSharding,
    class_conditional: bool = False,
    cond_drop_prob: float = 0.0,
    null_label: int | None = None,
    passes: int = 1,
    donate: bool = True,
) -> TrainStepFn:
    """Build the jitted train step (see the module docstring).

    Args:
      apply_fn: ``apply_fn(params, x, t, class_labels=None, key=None) -> y`` (``jaxdiff.models.functional``).
      loss_fn: from :func:`make_loss_fn`.
      optimizer, lr_schedule: from ``jaxdiff.training.optimizer.make_optimizer``.
      ema_update: from ``jaxdiff.training.ema.make_ema_update``.
      state_sharding: a ``TrainState`` of ``NamedSharding``s (``mesh.tree_shardings`` of the state).
      batch_sharding: the batch's sharding (``mesh.batch_sharding``), applied to every batch leaf.
      class_conditional: pass ``batch["label"]`` to the model as ``class_labels``.
      cond_drop_prob, null_label: label dropout (``jaxdiff.training.label_dropout``); ``null_label`` must be
        given when ``cond_drop_prob > 0``.
      passes: run each device's slice of the batch in this many passes (microbatches; it must divide the
        per-device batch; ``loss_fn`` must be a ``jaxdiff.losses.TrainingLoss`` when it is > 1).
      donate: donate the input state's buffers (the caller must not use that state afterwards).
    """

    if passes < 1 or (passes > 1 and not isinstance(loss_fn, TrainingLoss)):
        raise ValueError(f"passes={passes} needs an integer >= 1 (> 1: a TrainingLoss loss_fn)")
    if cond_drop_prob > 0 and (null_label is None or not class_conditional):
        raise ValueError(f"cond_drop_prob={cond_drop_prob} needs a class-conditional model and a null_label")

    def accumulated(params: Any, x0: jax.Array, key: jax.Array, labels: jax.Array | None) -> tuple[Any, Any]:
        draws, dropout_key = loss_fn.draw(key, x0)  # for the whole batch: the numbers of one pass
        grad_fn = jax.value_and_grad(loss_fn.evaluate, argnums=1, has_aux=True)
        loss, grads = None, None
        for k in range(passes):
            part = take_pass({"x0": x0, "draws": draws, "labels": labels}, k, passes, batch_sharding)
            if grads is not None:
                # One microbatch after another: without the barrier XLA may interleave them.
                grads, part = jax.lax.optimization_barrier((grads, part))
            (part_loss, _), part_grads = grad_fn(
                apply_fn,
                params,
                part["x0"],
                part["draws"],
                jax.random.fold_in(dropout_key, k),
                part["labels"],
            )
            loss = part_loss if loss is None else loss + part_loss
            grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
        return loss / passes, jax.tree.map(lambda g: g / passes, grads)

    def train_step(
        state: TrainState, batch: Mapping[str, jax.Array]
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.rng, state.step)
        labels = batch["label"] if class_conditional else None
        if labels is not None and cond_drop_prob > 0:
            labels = drop_labels(labels, key, cond_drop_prob, null_label)
        if passes == 1:
            grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
            (loss, _), grads = grad_fn(apply_fn, state.params, batch["image"], key, labels)
        else:
            loss, grads = accumulated(state.params, batch["image"], key, labels)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(grads: Any, state: TrainState) -> tuple[TrainState, jax.Array]:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema_params, decay = ema_update(state.ema_params, params, state.step + 1)
            new_state = state.replace(
                step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
            )
            return new_state, decay

        def keep(grads: Any, state: TrainState) -> tuple[TrainState, jax.Array]:
            _, decay = ema_update(state.ema_params, state.params, state.step + 1)  # (only the decay is kept)
            return state, decay

        # A non-finite step keeps the last good state, bitwise. A cond rather than a select of new and
        # old leaves: with the state donated, a select keeps every old buffer alive beside its update,
        # so XLA copies the state first.
        new_state, decay = jax.lax.cond(finite, update, keep, grads, state)
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": grad_norm.astype(jnp.float32),
            "lr": jnp.asarray(lr_schedule(state.step), jnp.float32),
            "ema_decay": decay,
            "finite": finite,
        }
        return new_state, metrics

    scalar = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, scalar),
        donate_argnums=(0,) if donate else (),
    )
