"""What ``train.py`` and ``sample.py`` share: one-line errors, flag parsing, multi-host start-up.

- ``run(main)``: ``absl.app.run`` whose flag parsing and ``main`` report bad input as
  ``error: <message>`` on stderr and exit with status 2, without a traceback (``UserError``, absl flag
  errors, ml_collections ``--config.*`` override errors, an unloadable config file).
- ``maybe_initialize_distributed(...)``: ``jax.distributed.initialize`` when the run spans several
  processes (explicit flags, ``JAX_COORDINATOR_ADDRESS``-style variables, or a detected cluster).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import app, flags, logging

from jaxdiff.errors import UserError

__all__ = [
    "EXIT_USER_ERROR",
    "UserError",
    "config_flag_path",
    "fail",
    "load_config_flag",
    "maybe_initialize_distributed",
    "one_line",
    "run",
    "without_traceback",
]

EXIT_USER_ERROR = 2


def one_line(message: Any) -> str:
    """The message on one line (newlines and runs of spaces collapsed)."""
    return re.sub(r"\s+", " ", str(message)).strip()


def fail(message: Any) -> None:
    """Print ``error: <message>`` on stderr and exit with status 2."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_USER_ERROR)


def _config_override_error(argv: Sequence[str], error: Exception) -> str:
    """Explain an exception raised while ml_collections applied ``--config.KEY=VALUE`` overrides."""
    text = one_line(error).strip("\"'")
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            path = arg[2:].split("=", 1)[0].split(".", 1)[1]  # "config.train.foo" -> "train.foo"
            leaf = path.rsplit(".", 1)[-1]
            if re.search(rf"\b{re.escape(leaf)}\b", text):
                if isinstance(error, (AttributeError, KeyError)):
                    return f"unknown config key {path!r} in {arg!r}"
                return f"bad value in {arg!r}: {text}"
    if isinstance(error, (AttributeError, KeyError)):
        return f"unknown config key {text!r} in the --config.* flags"
    return f"bad --config.* flag: {text}"


def without_traceback(message: Any) -> str:
    """A message that embeds a formatted traceback (config_flags does so for a failing config file),
    reduced to the text before it and the exception line at its end."""
    text = str(message)
    marker = "Traceback (most recent call last):"
    if marker not in text:
        return one_line(text)
    head, tail = text.split(marker, 1)
    lines = [line for line in tail.splitlines() if line.strip()]
    # The innermost frame in the user's own code (not a library's): where their config went wrong.
    where = ""
    for i, line in enumerate(lines[:-1]):
        frame = re.match(r'\s*File "([^"]+)", line (\d+)', line)
        if frame and "site-packages" not in frame.group(1) and not frame.group(1).startswith("<"):
            code = lines[i + 1].strip()
            where = f"{os.path.basename(frame.group(1))}:{frame.group(2)} `{code}`: "
    return one_line(f"{head} {where}{lines[-1] if lines else ''}")


def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.IllegalFlagValueError as e:
        fail(without_traceback(e).replace("flag --", "--"))
    except flags.Error as e:
        fail(without_traceback(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        fail(_config_override_error(argv, e))
    raise AssertionError("unreachable")


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with one-line errors (see the module docstring)."""

    def wrapped(argv: list[str]) -> Any:
        # absl would print library INFO lines (orbax is chatty); our own messages go to stderr directly.
        logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except UserError as e:
            fail(e)
        except KeyboardInterrupt:  # a second Ctrl-C, or one before training started: no traceback
            sys.stderr.write("interrupted\n")
            raise SystemExit(130) from None

    app.run(wrapped, flags_parser=_parse_flags)


def config_flag_path(name: str = "config") -> str | None:
    """The file a ``config_flags.DEFINE_config_file`` flag was given (None when it was not)."""
    try:
        return flags.FLAGS[name].config_filename or None
    except Exception:  # noqa: BLE001 - unparsed / absent: no file given
        return None


def load_config_flag(holder: Any, name: str = "config") -> Any:
    """The ``ConfigDict`` of a ``config_flags.DEFINE_config_file`` flag, or ``UserError``.

    ``config_flags`` defers a config file's load errors until first use; this forces them here.
    """
    config_path = config_flag_path(name)
    if not config_path:
        raise UserError("--config is required, e.g. --config configs/digits.py")
    try:
        config = holder.value
        config.to_dict()  # an unloadable file raises here
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the user's config file is bad input
        raise UserError(f"cannot load --config {config_path!r}: {without_traceback(e)}") from None
    if config is None:
        raise UserError(f"--config {config_path!r} gave no config (get_config() returned None)")
    return config


_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",  # explicit
    "SLURM_NTASKS",  # Slurm (several tasks)
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "MEGASCALE_COORDINATOR_ADDRESS",  # multislice TPU
)


def _cluster_detected(environ: Any) -> bool:
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(environ.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    # A TPU pod slice: several workers listed for this VM.
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def maybe_initialize_distributed(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Any = None,
) -> bool:
    """Call ``jax.distributed.initialize`` for a multi-process run; return whether it did.

    Args:
      mode: ``"auto"`` (initialize when explicit arguments are given or a cluster is detected from the
        environment: ``JAX_COORDINATOR_ADDRESS``, several Slurm / Open MPI tasks, a multi-worker TPU pod
        slice), ``"yes"`` (always; JAX auto-detects the cluster) or ``"no"``.
      coordinator_address, num_processes, process_id: passed to ``jax.distributed.initialize`` (the
        explicit form, e.g. several processes on one machine: ``127.0.0.1:1234``, 2, 0|1). Default from
        ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``.

    On CPU, collectives between processes use gloo.
    """
    env = os.environ if environ is None else environ
    if mode not in ("auto", "yes", "no"):
        raise UserError(f"--distributed={mode!r} is not one of auto, yes, no")
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if mode == "no" or (mode == "auto" and not explicit and not _cluster_detected(env)):
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise UserError(
            "a multi-process run needs all of --coordinator_address, --num_processes and --process_id "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
        )
    if (jax.config.jax_platforms or env.get("JAX_PLATFORMS", "")).startswith("cpu") or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs = dict(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"jax.distributed.initialize failed: {one_line(e)}") from None
    return True


def _has_accelerator() -> bool:
    """Whether a GPU/TPU plugin is installed (checked without creating a JAX backend)."""
    return any(
        importlib.util.find_spec(name) is not None
        for name in ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")
    )
