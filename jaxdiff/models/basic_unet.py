"""The small UNet of the Hugging Face diffusion course's "diffusion models from scratch" chapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models.config import basic_unet_config
from jaxdiff.models.layers import Dtype, conv2d, max_pool_2x, upsample_nearest_2x


class BasicUNet(nnx.Module):
    """Three 5x5 convs down (32, 64, 64 channels) with 2x max-pooling between them, three 5x5 convs
    up (64, 32, out_channels) with nearest 2x upsampling, the first two down activations added
    back as skips, SiLU after every conv (the last one included, as in the course).

    ``model(x, t=None, class_labels=None, *, rngs=None)``: ``x`` ``[B, H, W, in_channels]`` with
    ``H``, ``W`` divisible by 4 -> float32 ``[B, H, W, out_channels]``. It is not time-conditioned:
    ``t`` is accepted (so it fits ``apply_fn``) and ignored. Attribute names follow the course's
    PyTorch module (``down_layers.0.weight`` ...).
    """

    def __init__(
        self,
        model_config: Mapping[str, Any] | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        cfg = basic_unet_config(model_config or {"_class_name": "BasicUNet"})
        kw = dict(padding=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c_in, c_out = cfg["in_channels"], cfg["out_channels"]
        self.down_layers = nnx.List(
            [conv2d(c_in, 32, 5, **kw), conv2d(32, 64, 5, **kw), conv2d(64, 64, 5, **kw)]
        )
        self.up_layers = nnx.List(
            [conv2d(64, 64, 5, **kw), conv2d(64, 32, 5, **kw), conv2d(32, c_out, 5, **kw)]
        )

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | None = None,
        class_labels: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        del t, rngs  # not time-conditioned, no dropout
        if class_labels is not None:
            raise UserError("BasicUNet is not class-conditional: class_labels must be None")
        skips = []
        for i, layer in enumerate(self.down_layers):
            x = jax.nn.silu(layer(x))
            if i < 2:
                skips.append(x)
                x = max_pool_2x(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = upsample_nearest_2x(x) + skips.pop()
            x = jax.nn.silu(layer(x))
        return x.astype(jnp.float32)
