"""The device mesh and the shardings of the train state and of a batch.

One ``Mesh`` over all devices of all processes, axes ``("data", "fsdp")``:

- ``data``: pure data parallelism. Parameters, optimizer state and EMA are replicated along it.
- ``fsdp``: optional parameter sharding (ZeRO-3 / FSDP style) for models too large to replicate; size 1
  (off) by default. With ``fsdp > 1`` each array is split along its largest dimension that the axis size
  divides (arrays with no such dimension stay replicated); XLA inserts the all-gathers.

A batch is always split over *both* axes, so every device gets a distinct slice of the global batch and the
global batch size must be a multiple of the device count. Nothing here depends on the device count except
the layout: the same global arrays give the same results on 1 or N devices, up to float summation order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxdiff.errors import UserError

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "make_mesh",
    "batch_sharding",
    "replicated",
    "param_sharding",
    "tree_shardings",
    "check_batch_size",
    "global_batch",
    "put_global",
    "to_host",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` of shape ``(n_devices // fsdp, fsdp)`` with axes ``("data", "fsdp")``.

    Args:
      fsdp: size of the parameter-sharding axis; 1 (the default) replicates parameters.
      devices: the devices to use (default: ``jax.devices()``, every device of every process).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
        raise UserError(f"train.fsdp={fsdp!r} must be a positive divisor of the device count {n}")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device; the other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device."""
    return NamedSharding(mesh, PartitionSpec())


def param_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Replicated when ``fsdp == 1``; else split along the largest dimension the ``fsdp`` size divides."""
    fsdp = mesh.shape[FSDP_AXIS]
    if fsdp == 1 or not shape:
        return replicated(mesh)
    # Largest dimension first; ties go to the later dimension (output channels of HWIO kernels).
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
    for i in order:
        if shape[i] % fsdp == 0:
            spec = [None] * len(shape)
            spec[i] = FSDP_AXIS
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def tree_shardings(mesh: Mesh, tree: Any) -> Any:
    """``param_sharding`` for every array leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s)."""
    return jax.tree.map(lambda x: param_sharding(mesh, tuple(np.shape(x))), tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """Raise ``UserError`` unless the global batch splits evenly over the devices and the processes."""
    n = mesh.devices.size
    if batch_size < 1 or batch_size % n:
        raise UserError(
            f"{what}={batch_size} must be a positive multiple of the device count {n} "
            f"(the global batch is split evenly over the devices)"
        )
    if batch_size % jax.process_count():
        raise UserError(f"{what}={batch_size} must be a multiple of the process count {jax.process_count()}")


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """Assemble this process's slice of the batch (numpy, leading dim ``B / process_count``) into global
    ``jax.Array``s sharded by ``sharding``. On one process this is a plain sharded ``device_put``."""

    def one(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local)


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same in every process) -> global ``jax.Array``s with ``shardings``; each process
    fills only its own devices, so this works on several hosts too."""

    def one(x: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """Global arrays -> numpy on every process (gathered across processes when needed)."""

    def one(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
