"""``inception_features``: pool3 features (and logits) of uint8 images, batch sharded over all devices.

Images go through the network in fixed-size batches (the last one padded, so one compiled program serves
every batch); each batch is split over ``jax.devices()`` along N with a ``NamedSharding`` and the weights
are replicated, so 1 and 8 devices compute the same per-image numbers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.errors import UserError
from jaxdiff.evaluation.inception import resize_like_tensorflow1x
from jaxdiff.evaluation.weights import load_inception, load_state, resolve_weights

__all__ = ["InceptionExtractor", "as_uint8_rgb", "inception_features", "inception_extractor"]

DEFAULT_BATCH_SIZE = 64


def as_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """Check ``[N, H, W, C]`` uint8 images (C 1 or 3); one channel is repeated to RGB."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"images must be NHWC with 1 or 3 channels, got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
            raise UserError(f"images must be uint8 in 0..255; got {images.dtype} with NaN or inf values")
        raise UserError(
            f"images must be uint8 in 0..255, got {images.dtype} (convert with jaxdiff.images.to_uint8)"
        )
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


class InceptionExtractor:
    """A loaded FID Inception, jitted, with its weights replicated over ``jax.devices()``.

    ``extractor(images_u8, batch_size)`` -> ``{"pool3": float32 [N, 2048], "logits_unbiased": float32
    [N, 1008], "logits": float32 [N, 1008]}``; ``extractor.batches(...)`` yields the same per batch.
    """

    def __init__(self, model: nnx.Module, devices: list[jax.Device] | None = None):
        devices = list(devices or jax.devices())
        mesh = Mesh(np.array(devices), ("data",))
        self.num_devices = len(devices)
        self._data_sharding = NamedSharding(mesh, PartitionSpec("data"))
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        # Two programs: the resize (compiled per input size, cheap) and the network (compiled once per batch).
        self._resize: Callable = jax.jit(lambda images: resize_like_tensorflow1x(images.astype(jnp.float32)))
        self._network: Callable = jax.jit(lambda state, x: nnx.merge(graphdef, state).from_resized(x))

    def batches(
        self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[dict[str, np.ndarray]]:
        """The outputs for consecutive batches of ``images`` (uint8 ``[N, H, W, 1 or 3]``)."""
        images = as_uint8_rgb(images)
        # A multiple of the device count; for a small N the next power of two per device (few programs).
        per_device = max(1, -(-min(batch_size, len(images)) // self.num_devices))
        step = (
            min(1 << (per_device - 1).bit_length(), max(1, batch_size // self.num_devices)) * self.num_devices
        )
        for start in range(0, len(images), step):
            batch = images[start : start + step]
            count = len(batch)
            if count < step:
                batch = np.concatenate([batch, np.zeros((step - count, *batch.shape[1:]), np.uint8)])
            resized = self._resize(jax.device_put(batch, self._data_sharding))
            outputs = self._network(self._state, resized)
            yield {name: np.asarray(value)[:count] for name, value in outputs.items()}

    def __call__(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        parts = list(self.batches(images, batch_size))
        if not parts:
            raise UserError("no images to compute Inception features of (got N=0)")
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@functools.lru_cache(maxsize=2)
def _cached_extractor(safetensors_path: str, mtime: float, devices: tuple) -> InceptionExtractor:
    return InceptionExtractor(load_inception(load_state(safetensors_path)), list(devices))


def inception_extractor(
    weights_path: str | os.PathLike | None = None, *, allow_download: bool = False
) -> InceptionExtractor:
    """The FID Inception over all devices, loaded once per weight file (see ``weights.resolve_weights``)."""
    path = resolve_weights(weights_path, allow_download=allow_download)
    return _cached_extractor(path, os.path.getmtime(path), tuple(jax.devices()))


def inception_features(
    images: np.ndarray,
    weights_path: str | os.PathLike | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    allow_download: bool = False,
) -> np.ndarray:
    """Pool3 features (float32 ``[N, 2048]``) of uint8 NHWC images of any size (RGB, or 1 channel repeated).

    ``weights_path``: pytorch-fid's / torch-fidelity's ``.pth`` or a converted ``.safetensors``; ``None``
    looks in the cache (``allow_download`` lets it fetch the official file once).
    """
    extractor = inception_extractor(weights_path, allow_download=allow_download)
    return extractor(images, batch_size)["pool3"]
