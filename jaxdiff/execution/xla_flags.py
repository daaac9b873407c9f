"""Faster XLA defaults on the CPU, applied once when ``jaxdiff`` is imported.

XLA's CPU backend hands each convolution to YNNPACK by default. For the UNet convolutions used here
(3x3, 32-256 channels, NHWC) XLA's own convolution path (Eigen) is markedly faster, so YNNPACK's
convolution fusion is switched off (measurements in ``benchmarks/RESULTS.md``). XLA reads ``XLA_FLAGS``
once, when its first backend is created, so the flag has to be in the environment before that;
``import jaxdiff`` adds it there.

Rules:
- A user's own setting wins: an option already named in ``XLA_FLAGS`` is never touched.
- ``JAXDIFF_NO_XLA_TUNING=1`` switches the whole thing off.
- XLA aborts the process on a flag it does not know, so a flag is only added when every XLA library that
  will parse ``XLA_FLAGS`` (jaxlib's, and those of installed PJRT plugins) is seen to know it. The flag is
  a ``DebugOptions`` flag shared by all backends, so on GPU/TPU it is parsed and has no effect.
- If a JAX backend already exists, ``XLA_FLAGS`` has been read: nothing is changed (logged at debug level).
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

OPT_OUT_ENV = "JAXDIFF_NO_XLA_TUNING"

# (option, value, strings the XLA library must contain for the option and value to parse)
CPU_XLA_FLAGS: tuple[tuple[str, str, tuple[bytes, ...]], ...] = (
    (
        "xla_cpu_experimental_ynn_fusion_type",
        "-individual_convolution",
        (b"xla_cpu_experimental_ynn_fusion_type", b"LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"),
    ),
)

_TRUE = {"1", "true", "yes", "on"}


def opted_out(variable: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment variable ``variable`` switches a jaxdiff speed setting off ("1", "true",
    "yes" or "on"; ``JAXDIFF_NO_XLA_TUNING``, ``JAXDIFF_NO_MIMALLOC``, ``JAXDIFF_NO_WINOGRAD``)."""
    env = os.environ if environ is None else environ
    return env.get(variable, "").strip().lower() in _TRUE


def _backend_initialised() -> bool:
    """Whether JAX has created a backend (XLA then has read ``XLA_FLAGS`` already)."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if xla_bridge is None:
        return False
    check = getattr(xla_bridge, "backends_are_initialized", None)
    if check is not None:
        return bool(check())
    return bool(getattr(xla_bridge, "_backends", {}))


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _largest_first(paths: Iterable[Path]) -> list[Path]:
    # XLA itself is the big library of a package: look there first.
    return sorted(paths, key=lambda p: p.stat().st_size, reverse=True)


def _xla_libraries() -> list[list[Path]]:
    """Groups of shared libraries that hold an XLA which parses ``XLA_FLAGS``: jaxlib, then plugins.

    A group knows a flag if any of its libraries contains it.
    """
    groups: list[list[Path]] = []
    jaxlib_dir = _package_dir("jaxlib")
    if jaxlib_dir is not None:
        groups.append(_largest_first([*jaxlib_dir.glob("*.so"), *jaxlib_dir.glob("*.pyd")]))
    # PJRT plugins (CUDA, ROCm, ...) live in the ``jax_plugins`` namespace package; libtpu is separate.
    try:
        plugin_spec = importlib.util.find_spec("jax_plugins")
    except (ImportError, ValueError):
        plugin_spec = None
    for root in (plugin_spec.submodule_search_locations or []) if plugin_spec else []:
        for sub in sorted(Path(root).iterdir()):
            libs = _largest_first(sub.rglob("*.so")) if sub.is_dir() else []
            if libs:
                groups.append(libs)
    libtpu_dir = _package_dir("libtpu")
    if libtpu_dir is not None:
        groups.append(_largest_first(libtpu_dir.rglob("*.so")))
    return groups


def _contains_all(paths: Iterable[Path], needles: tuple[bytes, ...]) -> bool:
    found: set[bytes] = set()
    for path in paths:
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                found.update(n for n in needles if n not in found and m.find(n) != -1)
        except (OSError, ValueError):
            continue
        if len(found) == len(needles):
            return True
    return False


def flag_is_known(needles: tuple[bytes, ...]) -> bool:
    """Whether every XLA library that will parse ``XLA_FLAGS`` contains ``needles`` (flag and value)."""
    groups = _xla_libraries()
    return bool(groups) and all(_contains_all(libs, needles) for libs in groups)


def mentions_option(xla_flags: str, option: str) -> bool:
    """Whether an ``XLA_FLAGS`` string sets ``option`` (``--option=...`` or ``--option``)."""
    for token in xla_flags.split():
        name = token.lstrip("-").split("=", 1)[0]
        if name == option:
            return True
    return False


def apply_cpu_defaults(environ: dict[str, str] | None = None) -> list[str]:
    """Append jaxdiff's CPU flags to ``XLA_FLAGS`` where the user has not set them.

    Args:
      environ: the environment to edit (default ``os.environ``).

    Returns:
      The flags that were added (``["--name=value", ...]``); empty if none was.
    """
    env = os.environ if environ is None else environ
    if opted_out(OPT_OUT_ENV, env):
        logger.debug("%s is set: XLA_FLAGS left as it is", OPT_OUT_ENV)
        return []
    if _backend_initialised():
        logger.debug("a JAX backend already exists, so XLA_FLAGS has been read: CPU tuning not applied")
        return []
    current = env.get("XLA_FLAGS", "")
    added = []
    for option, value, needles in CPU_XLA_FLAGS:
        if mentions_option(current, option):
            logger.debug("XLA_FLAGS already sets --%s: kept as the user set it", option)
            continue
        if not flag_is_known(needles):
            logger.debug("this jaxlib (or a PJRT plugin) does not know --%s=%s: not added", option, value)
            continue
        added.append(f"--{option}={value}")
    if added:
        env["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
        logger.debug("XLA_FLAGS += %s", " ".join(added))
    return added
