"""Readable names for pytree paths (``jax.tree_util`` key paths), shared by checkpoint signatures and
optimizer parameter labels."""

from __future__ import annotations

from typing import Any


def key_name(key: Any) -> str:
    """One path entry as a string: a dict key, a dataclass / attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A key path as names: ``(DictKey('time_proj'), DictKey('weight'), GetAttrKey('value'))`` ->
    ``("time_proj", "weight", "value")``."""
    return tuple(key_name(k) for k in path)
