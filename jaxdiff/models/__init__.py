"""Flax NNX UNets: ``UNet2D`` (diffusers ``UNet2DModel`` config and weights) and the course's
``BasicUNet``; ``create_model`` builds one from a config, ``functional`` turns it into a pure
``apply_fn(params, x, t, class_labels=None, key=None)`` plus its ``params`` pytree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.basic_unet import BasicUNet
from jaxdiff.models.config import BASIC_UNET_CLASS_NAME, UNET2D_DEFAULTS, class_name, normalize_config
from jaxdiff.models.embeddings import GaussianFourierProjection
from jaxdiff.models.layers import Dtype
from jaxdiff.models.unet2d import UNet2D

ApplyFn = Callable[..., jax.Array]

__all__ = [
    "UNET2D_DEFAULTS",
    "ApplyFn",
    "BasicUNet",
    "UNet2D",
    "create_model",
    "frozen_param_paths",
    "functional",
    "normalize_config",
    "param_count",
]


def create_model(
    model_config: Mapping[str, Any] | Any,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> UNet2D | BasicUNet:
    """Build the network a config names (``_class_name``: ``"UNet2DModel"`` default, ``"BasicUNet"``).

    ``model_config`` is a dict or ``ml_collections.ConfigDict`` of diffusers ``UNet2DModel`` keys
    (lists or tuples); unknown keys and unsupported values raise ``UserError``. ``dtype`` is the
    compute dtype (``jnp.bfloat16`` for mixed precision), ``param_dtype`` the storage dtype.
    """
    cls = BasicUNet if class_name(model_config) == BASIC_UNET_CLASS_NAME else UNet2D
    return cls(model_config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def functional(model: nnx.Module) -> tuple[ApplyFn, nnx.State]:
    """Split a model into a pure ``apply_fn`` and its ``params`` (the ``nnx.State`` of its Params).

    ``apply_fn(params, x, t, class_labels=None, key=None)``: ``x`` ``[B, H, W, C]``, ``t`` ``[B]``
    int or float (a scalar broadcasts), ``class_labels`` ``[B]`` int or None, ``key`` a PRNG key
    that turns dropout on (None: deterministic). Returns float32 ``[B, H, W, out_channels]``.
    It closes over the graph structure only, so it can be jitted, differentiated and sharded.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(
        params: nnx.State,
        x: jax.Array,
        t: jax.Array | int | float,
        class_labels: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        module = nnx.merge(graphdef, params, rest)
        rngs = None if key is None else nnx.Rngs(dropout=key)
        return module(x, t, class_labels, rngs=rngs)

    return apply_fn, params


def frozen_param_paths(model: nnx.Module) -> tuple[tuple[str, ...], ...]:
    """Paths (as in the ``params`` tree, e.g. ``("time_proj", "weight")``) of the parameters that are never
    trained: those diffusers creates with ``requires_grad=False`` (the fourier time embedding's weight).

    They travel with the weights but get no optimizer update at all (no weight decay either), as
    ``torch.optim.AdamW`` skips a parameter without a gradient.
    """
    return tuple(
        tuple(str(k) for k in path) + ("weight",)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, GaussianFourierProjection)
    )


def param_count(params_or_model: nnx.State | nnx.Module | Any) -> int:
    """Number of scalars in a params pytree or in a model's ``nnx.Param``s."""
    if isinstance(params_or_model, nnx.Module):
        params_or_model = nnx.state(params_or_model, nnx.Param)
    return int(sum(x.size for x in jax.tree.leaves(params_or_model)))
