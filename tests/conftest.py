"""Helpers and fixtures the test files share.

- ``ROOT``: the repository; ``load_config(name)``: ``configs/<name>.py``'s config, as ``--config`` loads it.
- ``shared_cache_dir(tmp_path_factory)``: one XLA compilation-cache folder for the session (the pytest-xdist
  workers and their subprocesses share it); the ``compilation_cache`` fixture points this process at it.
- ``assert_close(out, ref, rel)``: the largest error relative to the reference's scale.

The end-to-end tests (CLIs in subprocesses, several devices or processes, notebooks, benchmark scripts)
are marked ``slow``: ``pytest -m "not slow"`` is the quick loop, CI runs everything.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str) -> Any:
    """``configs/<name>.py``'s ``get_config()`` (the way ``--config`` loads a file)."""
    spec = importlib.util.spec_from_file_location(f"_jaxdiff_config_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shared_cache_dir(tmp_path_factory: Any) -> str:
    """One compilation-cache folder for the whole test session (shared by the pytest-xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER") or base.name.startswith("popen-gw"):
        base = base.parent
    path = os.path.join(os.fspath(base), "jax_compilation_cache")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for this module: the runs of one tiny model compile their step once."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", shared_cache_dir(tmp_path_factory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


def assert_close(out: Any, ref: Any, rel: float = 1e-4) -> None:
    """``max |out - ref| <= rel * max |ref|``, with equal shapes."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= rel, f"max error {err:.2e} of the output scale, allowed {rel:.0e}"
