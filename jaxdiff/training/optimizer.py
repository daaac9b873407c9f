"""AdamW with a warmed-up learning-rate schedule and global-norm gradient clipping (optax).

The schedules are those of ``diffusers.optimization.get_scheduler`` (and the diffusers training scripts),
written with optax's schedules. ``lr(step)`` is the rate used by update number ``step`` (0-based):

- warm-up (``warmup_steps > 0``): ``lr * step / warmup_steps`` for ``step < warmup_steps`` (starts at 0);
- ``"constant"``: ``lr`` after the warm-up;
- ``"cosine"``: ``lr * 0.5 * (1 + cos(pi * p))``, ``p = (step - warmup) / (num_steps - warmup)``,
  reaching 0 at ``num_steps``;
- ``"linear"``: ``lr * (1 - p)``.

The transformation is ``clip_by_global_norm(grad_clip)`` (skipped when ``grad_clip <= 0``) followed by
``adamw`` (decoupled weight decay on every parameter, like ``torch.optim.AdamW``). Frozen parameters
(``frozen`` paths, see ``jaxdiff.models.frozen_param_paths``) get a zero update and count in neither the
clipping norm nor the weight decay, as torch treats a parameter with ``requires_grad=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from jaxdiff.errors import UserError
from jaxdiff.run_config import LR_SCHEDULES
from jaxdiff.tree_paths import path_names

__all__ = ["LR_SCHEDULES", "make_lr_schedule", "make_optimizer"]


def make_lr_schedule(
    learning_rate: float, *, lr_schedule: str = "cosine", warmup_steps: int = 0, num_steps: int = 1
) -> optax.Schedule:
    """The learning rate as a function of the 0-based update count (see the module docstring)."""
    if lr_schedule not in LR_SCHEDULES:
        raise UserError(f"train.lr_schedule={lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0 or (lr_schedule != "constant" and warmup_steps >= num_steps):
        raise UserError(
            f"train.warmup_steps={warmup_steps} must be >= 0 and below train.num_steps={num_steps} "
            f"for the {lr_schedule!r} schedule"
        )
    if lr_schedule == "constant":
        after = optax.constant_schedule(learning_rate)
    elif lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, decay_steps=num_steps - warmup_steps, alpha=0.0)
    else:
        after = optax.linear_schedule(learning_rate, 0.0, transition_steps=num_steps - warmup_steps)
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, after], boundaries=[warmup_steps])


def make_optimizer(
    train_config: Mapping[str, Any], frozen: Sequence[tuple[str, ...]] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, lr_schedule)`` from a config's ``train`` section.

    Keys: ``learning_rate``, ``lr_schedule``, ``warmup_steps``, ``num_steps``, ``weight_decay``, ``adam_b1``,
    ``adam_b2``, ``adam_eps``, ``grad_clip``. ``frozen``: parameter paths (prefixes of the params tree's
    keys) that are never updated.
    """
    c = train_config
    schedule = make_lr_schedule(
        float(c["learning_rate"]),
        lr_schedule=c["lr_schedule"],
        warmup_steps=int(c["warmup_steps"]),
        num_steps=int(c["num_steps"]),
    )
    adamw = optax.adamw(
        schedule,
        b1=float(c["adam_b1"]),
        b2=float(c["adam_b2"]),
        eps=float(c["adam_eps"]),
        weight_decay=float(c["weight_decay"]),
    )
    grad_clip = float(c["grad_clip"])
    # Always a two-part chain: the optimizer state keeps one structure whether clipping is on or off.
    clip = optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity()
    optimizer = optax.chain(clip, adamw)
    if frozen:
        frozen = tuple(tuple(p) for p in frozen)

        def labels(params: Any) -> Any:
            def label(path: tuple[Any, ...], _: Any) -> str:
                names = path_names(path)
                return "frozen" if any(names[: len(p)] == p for p in frozen) else "train"

            return jax.tree_util.tree_map_with_path(label, params)

        optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
    return optimizer, schedule
