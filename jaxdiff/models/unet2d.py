"""``UNet2D``: diffusers' ``UNet2DModel`` in Flax NNX, NHWC.

Attribute names mirror diffusers' module names, so the parameter tree reads like the PyTorch
state dict (``down_blocks.0.resnets.1.conv1.kernel`` <-> ``down_blocks.0.resnets.1.conv1.weight``)
and converting weights is a per-leaf rule (see ``jaxdiff.interop.diffusers``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.models.attention import Attention
from jaxdiff.models.config import block_kind, unet2d_config
from jaxdiff.models.embeddings import Embedding, GaussianFourierProjection, TimestepEmbedding, Timesteps
from jaxdiff.models.layers import Downsample2D, Dtype, Upsample2D, conv2d, group_norm
from jaxdiff.models.resnet import ResnetBlock2D


def _attentions(
    attention: bool, num_layers: int, channels: int, attn_kw: Mapping[str, Any], rngs: nnx.Rngs
) -> nnx.List | None:
    """One ``Attention`` after each resnet of a block (``Attn*Block2D``), or None."""
    if not attention:
        return None
    return nnx.List([Attention(channels, **_heads(attn_kw, channels), rngs=rngs) for _ in range(num_layers)])


class DownBlock2D(nnx.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D``: resnets (each followed by attention when ``attention``),
    then an optional 2x downsampler (a strided conv, or a resnet with average pooling when
    ``downsample_type="resnet"``). Returns the output and every intermediate for the skips."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        attention: bool,
        add_downsample: bool,
        downsample_type: str,
        downsample_padding: int,
        resnet_kw: Mapping[str, Any],
        attn_kw: Mapping[str, Any],
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    temb_channels,
                    **resnet_kw,
                    rngs=rngs,
                )
                for i in range(num_layers)
            ]
        )
        self.attentions = _attentions(attention, num_layers, out_channels, attn_kw, rngs)
        self.resnet_downsample = False
        down = None
        if add_downsample:
            if attention and downsample_type == "resnet":
                self.resnet_downsample = True
                down = ResnetBlock2D(
                    out_channels, out_channels, temb_channels, **resnet_kw, down=True, rngs=rngs
                )
            else:
                down = Downsample2D(
                    out_channels,
                    padding=downsample_padding,
                    dtype=resnet_kw["dtype"],
                    param_dtype=resnet_kw["param_dtype"],
                    rngs=rngs,
                )
        self.downsamplers = nnx.List([down]) if down is not None else None

    def __call__(
        self, h: jax.Array, temb: jax.Array, *, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, temb, rngs=rngs)
            if self.attentions is not None:
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsamplers is not None:
            down = self.downsamplers[0]
            h = down(h, temb, rngs=rngs) if self.resnet_downsample else down(h)
            skips.append(h)
        return h, skips


class UpBlock2D(nnx.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D``: each resnet takes the running features concatenated
    (channels last) with the most recent skip; optional attention after each resnet; then an
    optional 2x upsampler (nearest + conv, or a resnet when ``upsample_type="resnet"``)."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        attention: bool,
        add_upsample: bool,
        upsample_type: str,
        resnet_kw: Mapping[str, Any],
        attn_kw: Mapping[str, Any],
        rngs: nnx.Rngs,
    ):
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(
                ResnetBlock2D(resnet_in + skip_channels, out_channels, temb_channels, **resnet_kw, rngs=rngs)
            )
        self.resnets = nnx.List(resnets)
        self.attentions = _attentions(attention, num_layers, out_channels, attn_kw, rngs)
        self.resnet_upsample = False
        up = None
        if add_upsample:
            if attention and upsample_type == "resnet":
                self.resnet_upsample = True
                up = ResnetBlock2D(out_channels, out_channels, temb_channels, **resnet_kw, up=True, rngs=rngs)
            else:
                up = Upsample2D(
                    out_channels, dtype=resnet_kw["dtype"], param_dtype=resnet_kw["param_dtype"], rngs=rngs
                )
        self.upsamplers = nnx.List([up]) if up is not None else None

    def __call__(
        self, h: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, *, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            h = jnp.concatenate([h, skips[-1 - i]], axis=-1)
            h = resnet(h, temb, rngs=rngs)
            if self.attentions is not None:
                h = self.attentions[i](h)
        if self.upsamplers is not None:
            up = self.upsamplers[0]
            h = up(h, temb, rngs=rngs) if self.resnet_upsample else up(h)
        return h


class UNetMidBlock2D(nnx.Module):
    """``resnet -> [attention] -> resnet`` at the lowest resolution (diffusers ``UNetMidBlock2D``)."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        add_attention: bool,
        attn_groups: int | None,
        attn_norm_key: str,
        resnet_kw: Mapping[str, Any],
        attn_kw: Mapping[str, Any],
        rngs: nnx.Rngs,
    ):
        self.resnets = nnx.List(
            [ResnetBlock2D(channels, channels, temb_channels, **resnet_kw, rngs=rngs) for _ in range(2)]
        )
        kw = {**_heads(attn_kw, channels), "norm_num_groups": attn_groups, "norm_key": attn_norm_key}
        self.attentions = nnx.List([Attention(channels, **kw, rngs=rngs)]) if add_attention else None

    def __call__(self, h: jax.Array, temb: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.resnets[0](h, temb, rngs=rngs)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h, temb, rngs=rngs)


def _heads(attn_kw: Mapping[str, Any], channels: int) -> dict[str, Any]:
    """diffusers' head split: ``heads = C // attention_head_dim`` (one head when it is None)."""
    kw = dict(attn_kw)
    head_dim = kw.pop("attention_head_dim") or channels
    if head_dim > channels:
        raise UserError(
            f"model config attention_head_dim={head_dim} is larger than the {channels} channels it splits; "
            "allowed: a head size <= every attention block's channel count, or null"
        )
    return {**kw, "heads": channels // head_dim, "dim_head": head_dim}


class UNet2D(nnx.Module):
    """diffusers' ``UNet2DModel`` (DDPM UNet), NHWC.

    ``model(x, t, class_labels=None, *, rngs=None)``: ``x`` ``[B, H, W, in_channels]``, ``t`` ``[B]``
    int or float timesteps (a scalar broadcasts), ``class_labels`` ``[B]`` int (``[B, D]`` float for
    ``class_embed_type="identity"``) -> float32 ``[B, H, W, out_channels]``. ``rngs`` with a
    ``dropout`` stream turns dropout on; None is deterministic. ``H`` and ``W`` must be divisible by
    ``2 ** (len(block_out_channels) - 1)``.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters are stored in ``param_dtype``
    and group-norm statistics and timestep projections are always float32.
    """

    def __init__(
        self,
        model_config: Mapping[str, Any],
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        cfg = unet2d_config(model_config)
        boc = cfg["block_out_channels"]
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        time_embed_dim = cfg["time_embedding_dim"] or boc[0] * 4
        eps = cfg["norm_eps"]
        groups = cfg["norm_num_groups"]
        resnet_kw = dict(
            groups=groups,
            eps=eps,
            act_fn=cfg["act_fn"],
            time_embedding_norm=cfg["resnet_time_scale_shift"],
            dropout=float(cfg["dropout"]),
            **kw,
        )
        attn_kw = dict(attention_head_dim=cfg["attention_head_dim"], norm_num_groups=groups, eps=eps, **kw)

        self.conv_in = conv2d(cfg["in_channels"], boc[0], 3, padding=1, **kw, rngs=rngs)

        if cfg["time_embedding_type"] == "fourier":
            self.time_proj = GaussianFourierProjection(boc[0], scale=16.0, rngs=rngs)
            time_input_dim = 2 * boc[0]
        elif cfg["time_embedding_type"] == "learned":
            self.time_proj = Embedding(cfg["num_train_timesteps"], boc[0], param_dtype=param_dtype, rngs=rngs)
            time_input_dim = boc[0]
        else:
            self.time_proj = Timesteps(boc[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
            time_input_dim = boc[0]
        self.time_embedding = TimestepEmbedding(time_input_dim, time_embed_dim, **kw, rngs=rngs)

        self.class_embed_type = cfg["class_embed_type"]
        if self.class_embed_type is None and cfg["num_class_embeds"] is not None:
            self.class_embedding = Embedding(
                cfg["num_class_embeds"], time_embed_dim, param_dtype=param_dtype, rngs=rngs
            )
            self.class_embed_type = "embedding"
        elif self.class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(time_input_dim, time_embed_dim, **kw, rngs=rngs)
        else:
            self.class_embedding = None  # "identity" adds the labels themselves

        n = len(boc)
        down_blocks = []
        out_ch = boc[0]
        for i, block_type in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, boc[i]
            down_blocks.append(
                DownBlock2D(
                    in_ch,
                    out_ch,
                    time_embed_dim,
                    num_layers=cfg["layers_per_block"],
                    attention=block_kind(block_type) == "AttnDownBlock2D",
                    add_downsample=i < n - 1,
                    downsample_type=cfg["downsample_type"],
                    downsample_padding=cfg["downsample_padding"],
                    resnet_kw=resnet_kw,
                    attn_kw=attn_kw,
                    rngs=rngs,
                )
            )
        self.down_blocks = nnx.List(down_blocks)

        if cfg["mid_block_type"] is None:
            self.mid_block = None
        else:
            attn_groups = cfg["attn_norm_num_groups"]
            attn_norm_key = "attn_norm_num_groups"
            if attn_groups is None and cfg["resnet_time_scale_shift"] == "default":
                attn_groups, attn_norm_key = groups, "norm_num_groups"
            self.mid_block = UNetMidBlock2D(
                boc[-1],
                time_embed_dim,
                add_attention=cfg["add_attention"],
                attn_groups=attn_groups,
                attn_norm_key=attn_norm_key,
                resnet_kw={**resnet_kw, "output_scale_factor": cfg["mid_block_scale_factor"]},
                attn_kw={**attn_kw, "rescale_output_factor": cfg["mid_block_scale_factor"]},
                rngs=rngs,
            )

        up_blocks = []
        rev = list(reversed(boc))
        out_ch = rev[0]
        for i, block_type in enumerate(cfg["up_block_types"]):
            prev_ch, out_ch = out_ch, rev[i]
            up_blocks.append(
                UpBlock2D(
                    rev[min(i + 1, n - 1)],
                    prev_ch,
                    out_ch,
                    time_embed_dim,
                    num_layers=cfg["layers_per_block"] + 1,
                    attention=block_kind(block_type) == "AttnUpBlock2D",
                    add_upsample=i < n - 1,
                    upsample_type=cfg["upsample_type"],
                    resnet_kw=resnet_kw,
                    attn_kw=attn_kw,
                    rngs=rngs,
                )
            )
        self.up_blocks = nnx.List(up_blocks)

        self.conv_norm_out = group_norm(boc[0], groups, eps, **kw, rngs=rngs)
        self.conv_out = conv2d(boc[0], cfg["out_channels"], 3, padding=1, **kw, rngs=rngs)

        self.center_input_sample = cfg["center_input_sample"]
        self.fourier = cfg["time_embedding_type"] == "fourier"
        self.dtype = dtype

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | int | float,
        class_labels: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        batch = x.shape[0]
        t = jnp.asarray(t)
        t = jnp.broadcast_to(t.reshape(-1) if t.ndim else t, (batch,))
        if self.center_input_sample:
            x = 2 * x - 1.0

        emb = self.time_embedding(self.time_proj(t).astype(self.dtype))
        if self.class_embed_type is not None:
            if class_labels is None:
                raise UserError("this UNet is class-conditional: class_labels [B] must be given")
            if self.class_embed_type == "embedding":
                class_emb = self.class_embedding(class_labels)
            elif self.class_embed_type == "timestep":
                class_emb = self.class_embedding(self.time_proj(jnp.asarray(class_labels)).astype(self.dtype))
            else:  # identity
                class_emb = jnp.asarray(class_labels)
            emb = emb + class_emb.astype(self.dtype)
        elif class_labels is not None:
            raise UserError(
                "class_labels were given but the UNet has no class embedding (set num_class_embeds)"
            )

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, rngs=rngs)
            skips.extend(block_skips)
        if self.mid_block is not None:
            h = self.mid_block(h, emb, rngs=rngs)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb, rngs=rngs)
            del skips[-n:]

        h = self.conv_out(jax.nn.silu(self.conv_norm_out(h))).astype(jnp.float32)
        if self.fourier:
            h = h / t.astype(jnp.float32).reshape(batch, 1, 1, 1)
        return h
