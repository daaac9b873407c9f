"""Checkpoints of a training run: orbax ``CheckpointManager`` over the train state, the data iterator and a
small JSON record of the run (step, model-config fingerprint, config).

Layout: ``<directory>/<step>/{state,data,meta}/``.

- ``state``: the ``TrainState`` pytree (params, optimizer state, EMA, step, rng), saved with orbax's
  ``StandardCheckpointHandler`` (each process writes its shards; arrays are restored with the shardings of
  the abstract target, so a run may resume on another mesh).
- ``data``: grain's orbax handler (``grain.checkpoint``): one JSON file per process with that process's
  iterator position, so the data order continues exactly.
- ``meta``: JSON ``{"step", "fingerprint", "model", "config"}``; the fingerprint (a hash of the model config)
  lets a run refuse a workdir written by a different model instead of failing deep inside orbax.

Saves are asynchronous (``async_save=True``): ``save`` copies the arrays off the devices and returns while
a background thread writes. Each save is atomic: orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames
it to ``<step>`` only when every item is complete, so a process killed mid-write (SIGKILL) leaves the
previous checkpoints intact and only a temporary directory, which is reported and removed at the next start.
A finished checkpoint that cannot be restored (damaged files) is reported, moved to
``<directory>.damaged/<step>``, and the previous one is used.

A save that fails for lack of storage (no space, quota, a read-only file system, no permission), whether
the failure surfaces in ``save``, in orbax's background thread (then at the next ``save``, ``wait`` or
``close``) or as a TensorStore ``RESOURCE_EXHAUSTED ... No space left on device`` message, raises one
:class:`CheckpointStorageError` naming the checkpoint path and the cause, after orbax's background threads
have stopped; the unfinished ``<step>.orbax-checkpoint-tmp*`` folder is removed (or the message says it could
not be) and the finished checkpoints are left as they are. Orbax's own error logs of such a failure (each
with a traceback) are dropped while a ``Checkpointer`` is open: the exception says it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.futures import future as orbax_future
from orbax.checkpoint._src.futures import synchronization as orbax_synchronization

from jaxdiff.errors import UserError
from jaxdiff.tree_paths import path_names

__all__ = [
    "CheckpointStorageError",
    "Checkpointer",
    "Restored",
    "config_fingerprint",
    "canonical_json",
    "describe_config_diff",
    "storage_errno",
    "storage_failure",
    "tree_signature",
]

logger = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointStorageError(UserError):
    """A checkpoint could not be written for lack of storage: no space, quota, read-only, no permission.

    The message is one line naming the checkpoint path, the cause, the last finished checkpoint (left intact)
    and what became of the unfinished temporary folder.
    """


# errno -> what a user reads; these are the failures of the storage, not of jaxdiff or of the data.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# The same failures as TensorStore (orbax's array writer) and cloud storage clients word them. A bare
# RESOURCE_EXHAUSTED is not among them: XLA says that for device memory too.
_STORAGE_MESSAGES = (
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("Read-only file system", errno.EROFS),
    ("Permission denied", errno.EACCES),
    ("PERMISSION_DENIED", errno.EACCES),
    ("Operation not permitted", errno.EPERM),
)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _error_chain(error: BaseException) -> list[BaseException]:
    """``error``, its causes and contexts, and the members of exception groups (each once)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return seen


def storage_errno(error: BaseException) -> int | None:
    """The errno of a storage failure in ``error`` (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), or None.

    Looks through causes, contexts and exception groups; reads ``OSError.errno``, TensorStore's
    ``[os_error_code='28']`` and the C library's wording (``No space left on device``)."""
    for e in _error_chain(error):
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return e.errno
        text = str(e)
        match = _OS_ERROR_CODE.search(text)
        if match and int(match[1]) in _STORAGE_ERRNOS:
            return int(match[1])
        code = next((c for phrase, c in _STORAGE_MESSAGES if phrase in text), None)
        if code is not None:
            return code
    return None


def storage_failure(error: BaseException) -> str | None:
    """The storage cause of ``error`` in words (``"no space left on the device (ENOSPC)"``), or None when
    it is not a storage failure (see :func:`storage_errno`)."""
    code = storage_errno(error)
    return None if code is None else f"{_STORAGE_ERRNOS[code]} ({errno.errorcode[code]})"


class _DropStorageFailureLogs(logging.Filter):
    """Drops orbax's error logs (with tracebacks) of a storage failure that a Checkpointer reports itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or storage_failure(exc) is None


def canonical_json(obj: Any) -> str:
    """Deterministic JSON of a (nested) mapping: sorted keys, tuples as lists, ConfigDicts as dicts."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_fingerprint(model_config: Any) -> str:
    """A short hash of the model config: equal for configs that build the same parameter tree."""
    return hashlib.sha256(canonical_json(model_config).encode()).hexdigest()[:16]


def describe_config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"key: old -> new, ..."`` for the top-level keys that differ (compared as canonical JSON)."""
    old = json.loads(canonical_json(old))
    new = json.loads(canonical_json(new))
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            diffs.append(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return ", ".join(diffs) or "(no key differs)"


def tree_signature(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"params/a/kernel/value": shape, ...}`` for every array leaf: the same for a train state, its
    abstract twin and orbax's stored metadata of it (dataclass fields and dict keys both become names)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(path_names(path)): tuple(getattr(x, "shape", ())) for path, x in leaves}


def _signature_diff(stored: dict[str, Any], expected: dict[str, Any], limit: int = 3) -> str:
    parts = [f"unexpected {k}" for k in sorted(set(stored) - set(expected))]
    parts += [f"missing {k}" for k in sorted(set(expected) - set(stored))]
    parts += [
        f"{k} has shape {stored[k]} instead of {expected[k]}"
        for k in sorted(set(stored) & set(expected))
        if stored[k] != expected[k]
    ]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


@dataclasses.dataclass
class Restored:
    """What :meth:`Checkpointer.restore` found: the step, the train state and the meta record."""

    step: int
    state: Any
    meta: dict[str, Any]


def _is_primary() -> bool:
    return jax.process_index() == 0


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """The checkpoints of one run directory (see the module docstring).

    Args:
      directory: where the step directories live (created if missing).
      max_to_keep: keep this many most recent checkpoints (None: all).
      async_save: write in a background thread.
      log: called with one-line, user-facing reports (damaged or incomplete checkpoints); default logs.
      read_only: only restore: nothing is created, cleaned, moved or saved (damaged checkpoints are
        reported and skipped).
      best_metric: a key of the ``metrics`` given to :meth:`save` (lower is better): the checkpoint with
        its lowest value is kept too, beyond the ``max_to_keep`` most recent ones.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        log: Callable[[str], None] | None = None,
        read_only: bool = False,
        best_metric: str | None = None,
    ):
        path = os.fspath(directory)
        # Local paths are made absolute; URLs (gs://...) are kept (orbax writes through etils.epath).
        self.directory = epath.Path(path if "://" in path else os.path.abspath(path))
        self._log = log or logger.warning
        self.read_only = read_only
        if max_to_keep is not None and max_to_keep < 1:
            raise UserError(f"train.keep_checkpoints={max_to_keep} must be >= 1")
        self._async = async_save and not read_only
        self._saving: int | None = None  # the step whose background write is in flight
        self._closed = False
        self._log_filter = _DropStorageFailureLogs()
        logging.getLogger("absl").addFilter(self._log_filter)
        try:
            self._open(max_to_keep, best_metric)
        except Exception as e:
            logging.getLogger("absl").removeFilter(self._log_filter)
            cause = storage_failure(e)
            if cause is None:
                raise
            raise CheckpointStorageError(
                f"cannot use the checkpoint directory {self.directory}: {cause}"
            ) from e

    def _open(self, max_to_keep: int | None, best_metric: str | None) -> None:
        self._report_incomplete()
        keep: dict[str, Any] = {"max_to_keep": max_to_keep}
        if best_metric is not None:
            # The newest max_to_keep, and the best of those saved with metrics (reverse: lowest first).
            latest = ocp.checkpoint_managers.LatestN(n=max_to_keep)
            best = ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric],
                reverse=True,
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            keep = {"preservation_policy": ocp.checkpoint_managers.AnyPreservationPolicy([latest, best])}
        options = ocp.CheckpointManagerOptions(
            **keep,
            enable_async_checkpointing=self._async,
            cleanup_tmp_directories=not self.read_only,
            create=not self.read_only,  # (orbax's read_only mode only warns: saves are refused here)
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "data": _grain_handler(),
            },
        )
        # Orbax removes unfinished writes in a background thread and waits for it only in its next save:
        # a run that stops before saving (a refused workdir, nothing left to train) would shut the
        # interpreter down under that thread, which then prints a traceback. Finish it here.
        cleanup = getattr(self._manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
            self._manager._cleanup_tmp_directory_future = None

    # -- inspection ---------------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """The steps of the finished checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON record saved with ``step`` (raises if it is missing or unreadable)."""
        path = self.directory / str(step) / "meta" / "metadata"
        if not path.exists():
            # Orbax's JSON handler file name is an implementation detail: fall back to a restore.
            return dict(
                self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            )
        return json.loads(path.read_text())

    def _report_incomplete(self) -> None:
        if not self.directory.exists() or not _is_primary() or self.read_only:
            return
        for path in sorted(self.directory.iterdir()):
            if TMP_MARKER in path.name:
                step = path.name.split(".", 1)[0]
                self._log(
                    f"ignoring an incomplete checkpoint write for step {step} ({path.name}): "
                    "the run was stopped while saving; it is removed"
                )

    # -- save / restore -----------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iterator: Any = None,
        meta: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> bool:
        """Start saving ``state`` (and the data iterator's position, and ``meta``) as checkpoint ``step``.

        Returns once the arrays are copied off the devices (the state may then be donated); the files are
        written in the background. A step that is already saved is skipped (returns False). ``metrics``:
        scalars kept with the checkpoint (``best_metric`` ranks by them).

        Raises:
          CheckpointStorageError: this save, or the previous one still in flight, failed for lack of storage
            (the checkpointer is then closed).
        """
        if self.read_only:
            raise UserError(f"checkpoints in {self.directory} were opened read-only")
        if self._closed:
            raise UserError(f"the checkpointer of {self.directory} is closed")
        self.wait()  # orbax waits for the previous save anyway; this names its step if it failed
        if step in self._manager.all_steps():
            return False
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._saving = step
        try:
            started = self._manager.save(
                step, args=ocp.args.Composite(**items), metrics=dict(metrics) if metrics else None, force=True
            )
        except Exception as e:
            self._fail(step, e)
        if not self._async:
            self._saving = None
        return started

    def restore(
        self,
        abstract_state: Any,
        *,
        data_iterator: Any = None,
        check_meta: Callable[[dict[str, Any]], None] | None = None,
    ) -> Restored | None:
        """Restore the newest checkpoint that restores cleanly; None when there is none.

        Args:
          abstract_state: the ``TrainState`` as ``jax.ShapeDtypeStruct``s with shardings (its structure,
            shapes, dtypes and placement are those of the result).
          data_iterator: a grain iterator whose position is set from the checkpoint (in place).
          check_meta: called with each checkpoint's meta record before its state is read; raise
            ``UserError`` there to refuse the directory (e.g. a different model config). Nothing is moved.

        A checkpoint whose meta or state cannot be read is reported, moved to ``<directory>.damaged/`` and
        the previous one is tried; if none is usable a ``UserError`` says so.
        """
        steps = self.all_steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
                self._quarantine(step, e)
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                stored = self._manager.item_metadata(step)["state"]
                stored_signature = tree_signature(stored)
            except Exception as e:  # noqa: BLE001
                self._quarantine(step, e)
                continue
            if stored_signature != tree_signature(abstract_state):
                raise UserError(
                    f"checkpoint {step} in {self.directory} holds a train state of another structure "
                    f"({_signature_diff(stored_signature, tree_signature(abstract_state))}): the model or "
                    "optimizer config differs from the one that wrote it; use another --workdir"
                )
            items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
            has_data = (self.directory / str(step) / "data").exists()
            if data_iterator is not None and has_data:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001
                self._quarantine(step, e)
                continue
            if data_iterator is not None and not has_data:
                self._log(f"checkpoint {step} has no data-iterator state: the data order restarts")
            return Restored(step=step, state=restored.state, meta=meta)
        where = "" if self.read_only else f" (moved to {self.directory}.damaged/)"
        raise UserError(f"no usable checkpoint in {self.directory}: every one is damaged{where}")

    def _quarantine(self, step: int, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
        if self.read_only:
            self._log(f"checkpoint {step} is damaged or incomplete ({reason}); trying the previous one")
            return
        target = epath.Path(f"{self.directory}.damaged") / f"{step}-{int(time.time())}"
        self._log(
            f"checkpoint {step} is damaged or incomplete ({reason}); moved to {target}; trying the previous"
        )
        if _is_primary():
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        _sync(f"jaxdiff_quarantine_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until the background writes are finished (and raise their errors: a storage failure as
        :class:`CheckpointStorageError`)."""
        if self._closed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._fail(self._saving, e)
        self._saving = None

    def close(self) -> None:
        """Finish the background writes and release orbax's threads (idempotent; raises like :meth:`wait`)."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # A failed background save has already stopped its threads; this joins what is left.
            with contextlib.suppress(Exception):
                self._manager.wait_until_finished()
            self._manager.close()
        finally:
            logging.getLogger("absl").removeFilter(self._log_filter)

    def _fail(self, step: int | None, error: BaseException) -> None:
        """Re-raise ``error``, or for a storage failure: stop orbax, remove the unfinished folder of
        ``step`` and raise one ``CheckpointStorageError`` line."""
        cause = storage_failure(error)
        if cause is None:
            raise error
        _stop_stranded_save_threads(orbax_synchronization.OperationIdGenerator.get_current_operation_id())
        # The failed save's work that never started is garbage now; Python would warn about each piece.
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        with contextlib.suppress(Exception):
            self._shut_down()
        target = self.directory / str(step) if step is not None else self.directory
        finished = sorted(int(p.name) for p in _listdir(self.directory) if p.name.isdigit())
        kept = f"checkpoint {finished[-1]} is intact" if finished else "there is no earlier checkpoint"
        leftover = ""
        if _is_primary():
            leftovers = []
            for path in _listdir(self.directory):
                if TMP_MARKER in path.name and (step is None or path.name.split(".", 1)[0] == str(step)):
                    try:
                        path.rmtree()
                        leftovers.append(f"removed the unfinished {path}")
                    except OSError as e:
                        reason = storage_failure(e) or f"{type(e).__name__}: {e}"
                        leftovers.append(f"could not remove the unfinished {path} ({reason}): delete it")
            leftover = "; " + "; ".join(leftovers) if leftovers else ""
        what = f"checkpoint {step}" if step is not None else "a checkpoint"
        if storage_errno(error) in (errno.ENOSPC, errno.EDQUOT):
            advice = f"free space on the disk of {self.directory}"
        else:
            advice = f"make {self.directory} writable"
        raise CheckpointStorageError(
            f"cannot save {what} to {target}: {cause}; {kept}{leftover}. To continue, {advice} and run the "
            "same command again: it resumes from the last checkpoint"
        ) from error

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop_stranded_save_threads(operation_id: str, timeout_s: float = 30.0) -> None:
    """Stop orbax's background threads of a failed save that still wait for a signal from it.

    When the step directory cannot be created (read-only, no space), the threads of the other items wait
    for its "created" signal until orbax's barrier timeout (300 s) and then log ``TimeoutError``
    tracebacks. Each is cancelled and woken (its signal set), so it returns without running. This uses
    orbax's private ``_SignalingThread``; if that changes, the threads are left to time out as before.
    """
    thread_type = getattr(orbax_future, "_SignalingThread", None)
    if thread_type is None:
        return
    stranded = [
        t
        for t in threading.enumerate()
        if isinstance(t, thread_type) and t.is_alive() and getattr(t, "_operation_id", None) == operation_id
    ]
    for thread in stranded:
        thread.cancel()
    for thread in stranded:
        with contextlib.suppress(Exception):
            orbax_future.set_signals(thread._receive_signals, operation_id=operation_id)
    deadline = time.monotonic() + timeout_s
    for thread in stranded:
        # (orbax's join raises CancelledError for a cancelled thread: that is the expected outcome)
        threading.Thread.join(thread, timeout=max(0.0, deadline - time.monotonic()))


def _grain_handler() -> Any:
    return grain.checkpoint.CheckpointHandler()


def has_checkpoints(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a finished checkpoint (a step folder), read without opening a manager
    (which would create the folder)."""
    return any(p.name.isdigit() for p in _listdir(epath.Path(directory)))


def _listdir(directory: epath.Path) -> list[epath.Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def same_model_check(
    workdir: str, fingerprint: str, model_config: Mapping[str, Any]
) -> Callable[[dict], None]:
    """A ``check_meta`` that refuses a checkpoint written by another model config, naming the difference."""

    def check(meta: dict[str, Any]) -> None:
        stored = meta.get("fingerprint")
        if stored is not None and stored != fingerprint:
            diff = describe_config_diff(meta.get("model", {}), model_config)
            raise UserError(
                f"workdir {workdir} holds a checkpoint of a different model config ({diff}); "
                "use a new --workdir, or the model config that wrote it"
            )

    return check


def restore_subtree(
    directory: str | os.PathLike,
    name: str,
    abstract: Any,
    *,
    check_meta: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[int, Any] | None:
    """Only the train state's field ``name`` (e.g. ``"ema_params"``) of the newest checkpoint that restores
    it: orbax's partial restore reads those arrays and nothing else (no optimizer state). Read-only.

    Args:
      directory: the checkpoints folder.
      name: a ``TrainState`` field.
      abstract: that field as ``jax.ShapeDtypeStruct``s with shardings (the result's layout).
      check_meta, log: as :meth:`Checkpointer.restore`.

    Returns:
      ``(step, tree)``, or None when there is no checkpoint; ``UserError`` when none restores.
    """
    log = log or logger.warning
    with Checkpointer(directory, read_only=True, async_save=False, log=log) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            return None
        metas = {}
        for step in steps:
            try:
                metas[step] = ckpt.read_meta(step)
            except Exception as e:  # noqa: BLE001 - an unreadable record: the checkpoint is unusable
                metas[step] = e
    manager = ocp.CheckpointManager(
        epath.Path(os.fspath(directory)),
        options=ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )
    try:
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype), abstract
        )
        for step in reversed(steps):
            meta = metas[step]
            if isinstance(meta, Exception):
                log(
                    f"checkpoint {step} is damaged or incomplete ({type(meta).__name__}); trying the previous"
                )
                continue
            if check_meta is not None:
                check_meta(meta)
            args = ocp.args.PyTreeRestore(
                {name: abstract}, restore_args={name: restore_args}, partial_restore=True
            )
            try:
                restored = manager.restore(step, args=ocp.args.Composite(state=args))
            except Exception as e:  # noqa: BLE001
                log(f"checkpoint {step} is damaged or incomplete ({type(e).__name__}); trying the previous")
                continue
            return step, restored.state[name]
    finally:
        manager.close()
    raise UserError(f"no usable checkpoint in {os.fspath(directory)}: every one is damaged")
