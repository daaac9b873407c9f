"""Label dropout for classifier-free guidance: some training labels become the null label.

A model trained this way predicts both ``eps(x, t, class)`` and ``eps(x, t, null)``, the two halves that
classifier-free guidance (Ho & Salimans 2022) combines at sampling time. Each example of the global batch
is dropped independently with probability ``train.cond_drop_prob``, by a coin drawn from the train step's
key over the *global* batch shape (partitionable threefry): the same labels on any number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["LABEL_DROP_STREAM", "drop_labels"]

# fold_in(step key, LABEL_DROP_STREAM) keys the coins: a stream apart from the loss's noise and timesteps.
LABEL_DROP_STREAM = 0x4C44


def drop_labels(labels: jax.Array, key: jax.Array, prob: float, null_label: int) -> jax.Array:
    """``labels`` (int32 ``[B]``) with each entry replaced by ``null_label`` with probability ``prob``.

    ``key`` is the train step's key (the coins use ``fold_in(key, LABEL_DROP_STREAM)``); ``prob`` 0 returns
    ``labels`` unchanged. Deterministic in ``key``; the same for any sharding of ``labels``.
    """
    if prob == 0:
        return labels
    drop = jax.random.bernoulli(jax.random.fold_in(key, LABEL_DROP_STREAM), prob, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)
