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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxdiff.errors import UserError
from jaxdiff.tree_paths import path_names

__all__ = [
    "Checkpointer",
    "Restored",
    "config_fingerprint",
    "canonical_json",
    "describe_config_diff",
    "tree_signature",
]

logger = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"


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
        from jax.experimental import multihost_utils

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
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only,
            create=not read_only,  # (orbax's own read_only mode only adds warnings: saves are refused here)
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
        """
        if self.read_only:
            raise UserError(f"checkpoints in {self.directory} were opened read-only")
        if step in self._manager.all_steps():
            return False
        items: dict[str, Any] = {
            "state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        }
        if data_iterator is not None:
            items["data"] = _grain_save(data_iterator)
        return self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=dict(metrics) if metrics else None, force=True
        )

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
                items["data"] = _grain_restore(data_iterator)
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
        """Block until the background writes are finished (and raise their errors)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _grain_handler() -> Any:
    import grain

    return grain.checkpoint.CheckpointHandler()


def _grain_save(iterator: Any) -> Any:
    import grain

    return grain.checkpoint.CheckpointSave(iterator)


def _grain_restore(iterator: Any) -> Any:
    import grain

    return grain.checkpoint.CheckpointRestore(iterator)


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
