"""Run jaxdiff's command-line programs under mimalloc, a faster memory allocator for XLA on a CPU.

XLA's CPU runtime allocates each execution's temporary buffers afresh: one arena of ~600 MB for the
course UNet's train step at batch 16. glibc's ``malloc`` serves an allocation that large with ``mmap``
and unmaps it on ``free``, so every step page-faults the whole arena in again and the kernel zeroes it
(a sizeable share of each step's CPU time). mimalloc, told never to hand freed memory back to the OS
(``MIMALLOC_PURGE_DELAY=-1``), serves the next step from the same pages (measurements in
``benchmarks/RESULTS.md``). Intel's PyTorch CPU guides preload tcmalloc or jemalloc for the same reason.

A malloc replacement only takes effect when the dynamic loader puts it first, at process start, so
:func:`relaunch_under_mimalloc` re-executes the program with ``LD_PRELOAD`` set; ``train.py``,
``sample.py`` and the benchmarks call it before anything else. Code that imports jaxdiff in its own
process gets the same by starting Python under ``LD_PRELOAD=$(python -m jaxdiff.execution.allocator)``.

Rules: Linux only; the library comes from the ``cmeel-mimalloc`` wheel (a jaxdiff dependency on
x86-64 Linux); an ``LD_PRELOAD`` that already names an allocator (mimalloc, tcmalloc, jemalloc) is left
as it is; a user's own ``MIMALLOC_*`` settings win; ``JAXDIFF_NO_MIMALLOC=1`` switches it all off.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import MutableMapping, Sequence

from jaxdiff.execution.xla_flags import opted_out

OPT_OUT_ENV = "JAXDIFF_NO_MIMALLOC"
DISTRIBUTION = "cmeel-mimalloc"
LIBRARY = "cmeel.prefix/lib/libmimalloc.so"
ALLOCATOR_NAMES = ("mimalloc", "tcmalloc", "jemalloc")
# Never give freed pages back to the OS: XLA frees and re-allocates its arena every execution.
MIMALLOC_DEFAULTS = {"MIMALLOC_PURGE_DELAY": "-1"}


def library_path() -> str | None:
    """The installed ``libmimalloc.so`` (from the ``cmeel-mimalloc`` wheel), or None."""
    try:
        path = importlib.metadata.distribution(DISTRIBUTION).locate_file(LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = os.fspath(path)
    return path if os.path.isfile(path) else None


def preloaded_allocator(environ: MutableMapping[str, str]) -> str | None:
    """The allocator library ``LD_PRELOAD`` already names, or None."""
    for entry in environ.get("LD_PRELOAD", "").replace(":", " ").split():
        if any(name in os.path.basename(entry) for name in ALLOCATOR_NAMES):
            return entry
    return None


def preload_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute under mimalloc, or None where nothing should change.

    None when: not Linux, ``JAXDIFF_NO_MIMALLOC`` is set, ``LD_PRELOAD`` already names an allocator
    (this is also what stops a second re-execution), or mimalloc is not installed.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return None
    if opted_out(OPT_OUT_ENV, env):
        return None
    if preloaded_allocator(env) is not None:
        return None
    library = library_path()
    if library is None:
        return None
    new = dict(env)
    new["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "").strip()) if p)
    for key, value in MIMALLOC_DEFAULTS.items():
        new.setdefault(key, value)
    return new


def relaunch_under_mimalloc(argv: Sequence[str] | None = None) -> None:
    """Re-execute this Python program under mimalloc (see the module docstring); returns only when
    nothing is to change. Call it first thing, before threads or files exist: the process is replaced.

    Args:
      argv: the full command line to re-run, interpreter first (default ``sys.orig_argv``: the same
        interpreter options and script arguments as this process got).
    """
    env = preload_environment()
    if env is None:
        return
    args = [sys.executable, *(sys.orig_argv if argv is None else argv)[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


def active() -> bool:
    """Whether mimalloc is this process's allocator (its library is mapped and was preloaded)."""
    if preloaded_allocator(os.environ) is None:
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any("libmimalloc" in line for line in maps)
    except OSError:
        return False


if __name__ == "__main__":
    # ``LD_PRELOAD=$(python -m jaxdiff.execution.allocator) python my_script.py``: prints the library's path.
    path = library_path()
    if path is None:
        sys.exit(f"error: {DISTRIBUTION} is not installed (pip install {DISTRIBUTION})")
    print(path)
