"""Read a PyTorch ``.pth`` state dict as numpy arrays, without torch and without arbitrary unpickling.

A ``torch.save`` file is either a zip archive (``<name>/data.pkl`` plus one raw little-endian storage per
tensor under ``<name>/data/<key>``) or, before PyTorch 1.6, a run of pickles followed by the raw storages.
Either way the pickle only needs a handful of globals to rebuild a state dict: ``collections.OrderedDict``,
the tensor-rebuild functions of ``torch._utils`` and the typed-storage classes (``torch.FloatStorage``...).
The unpickler here maps exactly those names to plain-numpy stand-ins and refuses every other global with a
``UserError`` before anything is called, so a file holding e.g. ``os.system`` is rejected, never executed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from jaxdiff.errors import UserError

__all__ = ["read_state_dict"]

# torch's typed-storage class names -> the numpy dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# The legacy (pre-zip) format starts with this pickled integer.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stands for ``torch.<X>Storage`` in a pickle: only its element dtype matters."""

    def __init__(self, dtype: type):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_ignored: Any
) -> np.ndarray:
    """``torch._utils._rebuild_tensor(_v2)``: a strided view of a flat storage (copied by the caller; a legacy
    file's storages are filled only after its pickle is read)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
            raise UserError(f"a tensor of shape {size} reaches past its storage of {storage.size} elements")
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )


def _rebuild_parameter(data: np.ndarray, *_ignored: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; storages come from ``load_storage(key, type, numel)``."""

    def __init__(self, file: BinaryIO, path: str, load_storage: Any):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UserError(
                f"{self._path} is not a plain weight file: its pickle asks for {module}.{name}, "
                "and only tensors, storages and OrderedDict are read (no arbitrary unpickling)"
            )
        return _ALLOWED_GLOBALS[(module, name)]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UserError(
                f"{self._path}: unexpected persistent reference {pid!r:.80} (only storages allowed)"
            )
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise UserError(f"{self._path}: storage {key} has no known element type")
        return self._load_storage(key, storage_type.dtype, numel)


def _read_zip(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise UserError(f"{path} is a zip archive but not a torch.save file (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = f"{prefix}byteorder"
        big_endian = byteorder_name in names and archive.read(byteorder_name).strip() == b"big"
        storages: dict[str, np.ndarray] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise UserError(f"{path} is incomplete: storage {entry} is missing")
                raw = archive.read(entry)
                if len(raw) < numel * dtype.itemsize:
                    raise UserError(f"{path} is incomplete: storage {entry} is shorter than its tensor")
                storages[key] = np.frombuffer(raw, dtype.newbyteorder(">" if big_endian else "<"), numel)
            return storages[key].astype(dtype, copy=False)

        with archive.open(pickles[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), path, load_storage).load()


def _read_legacy(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        # The raw storages follow the pickles: tensors are views of buffers filled once the pickles are read.
        pending: dict[str, tuple[np.dtype, int, np.ndarray]] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in pending:
                pending[key] = (dtype, numel, np.empty(numel, dtype))
            return pending[key][2]

        unpickler = _RestrictedUnpickler(f, path, load_storage)
        if unpickler.load() != _LEGACY_MAGIC:
            raise UserError(f"{path} is not a torch.save file (neither a zip archive nor the legacy format)")
        unpickler.load()  # protocol version
        unpickler.load()  # sys info (endianness, type sizes)
        result = unpickler.load()
        keys = unpickler.load()
        if not isinstance(keys, list):
            raise UserError(f"{path}: malformed legacy torch.save file (no storage key list)")
        for key in keys:
            header = f.read(8)
            if len(header) < 8 or str(key) not in pending:
                raise UserError(f"{path} is incomplete or malformed at storage {key}")
            dtype, numel, target = pending[str(key)]
            (stored_numel,) = struct.unpack("<q", header)
            raw = f.read(stored_numel * dtype.itemsize)
            if stored_numel < numel or len(raw) < stored_numel * dtype.itemsize:
                raise UserError(f"{path} is incomplete: storage {key} is truncated")
            target[:] = np.frombuffer(raw, dtype, stored_numel)[:numel]
    return result


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``'d state dict as ``{name: np.ndarray}`` (torch's NCHW layout kept).

    Raises ``UserError`` for a missing, truncated or foreign file and for any pickle that asks for more
    than tensors (checked before anything in it is called).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"weight file {path} does not exist")
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError) as error:
        raise UserError(
            f"{path} is not a readable torch.save file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    tensors = {str(k): np.array(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise UserError(f"{path} holds no tensors")
    return tensors
