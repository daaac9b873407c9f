"""A run directory's ownership and its own files: one writer per workdir, and writes that never follow
symlinks.

**The lock.** ``WorkdirLock(workdir)`` creates ``<workdir>/.lock`` atomically (``O_CREAT | O_EXCL``) with a
JSON record of the holder: ``{"pid", "host", "start_time", "command", "boot_id", "proc_start"}``. In a job of
several processes only process 0 takes it (the others learn the outcome from it), so it stands for the job.
A second run on the same workdir is refused with one line naming the holder's pid, host and start time.
A lock left by a process that no longer runs (SIGKILL, a crash, a reboot) is *stale* and is taken over with
one reported line. Stale means: written on this host, and the pid is gone, or belongs to another process
now (the kernel's start time of the pid, ``/proc/<pid>/stat`` field 22, differs from the recorded one), or
the machine has rebooted since (``/proc/sys/kernel/random/boot_id`` differs). A lock from another host is
always held: its process cannot be checked from here (delete the file by hand once that run is gone).

What holds where:

- local disks and NFSv3+ (``O_EXCL`` is atomic): at most one run holds a workdir; a stale lock is taken
  over by exactly one of several runs racing for it (the loser sees the winner's lock and is refused);
- object stores (``gs://``, ``s3://`` through ``etils.epath``): there is no create-if-absent, so the lock is
  "look, then write": it refuses a second run started after the first has written its lock (the common
  case: a restart script while the old run lives), but two runs started within the same moment may both
  proceed. Stale detection works only for locks written on the same host.

**Safe writes.** :func:`open_in_workdir`, :func:`makedirs_in_workdir` and :func:`write_bytes_atomic` write a
workdir's own files (``metrics.jsonl``, ``config.json``, ``samples/*.png``, ...) as real files below the
workdir: each directory below the workdir is opened with ``O_NOFOLLOW`` relative to its parent (no
check-then-use race) and the file with ``O_NOFOLLOW``, so a symlink planted at ``metrics.jsonl`` or
``samples/`` is refused with a ``UserError`` naming it, never written through. The workdir itself may be a
symlink (that is the user's choice of path). Paths are relative to the workdir and may not contain ``..``.
A URL workdir (``gs://...``) has no symlinks: there the helpers write through ``etils.epath`` (an object is
written whole).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxdiff.errors import UserError

__all__ = [
    "LOCK_NAME",
    "WorkdirLock",
    "makedirs_in_workdir",
    "open_in_workdir",
    "write_bytes_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_UNREADABLE_LOCK_GRACE_S = 2.0  # a lock file just created by O_EXCL is empty until its writer fills it


# -- process identity -------------------------------------------------------------------------------------


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (the command name) is in parentheses and may hold spaces: count fields after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _holder_record(command: str | None) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "start_unix": now,
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "boot_id": _boot_id(),
        "proc_start": _process_start_ticks(os.getpid()),
    }


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the lock ``holder`` (a lock file's JSON) is stale, or None when its process may still run."""
    try:
        pid, host = int(holder["pid"]), str(holder["host"])
    except (KeyError, TypeError, ValueError):
        return "it names no process"
    if host != socket.gethostname():
        return None
    boot_id = _boot_id()
    if holder.get("boot_id") and boot_id and holder["boot_id"] != boot_id:
        return "the machine has restarted since"
    if not _pid_alive(pid):
        return f"process {pid} no longer runs"
    recorded, current = holder.get("proc_start"), _process_start_ticks(pid)
    if recorded is not None and current is not None and int(recorded) != current:
        return f"pid {pid} now belongs to another process"
    return None


# -- the lock ---------------------------------------------------------------------------------------------


class WorkdirLock:
    """Exclusive ownership of a run directory (see the module docstring).

    Use as a context manager, or call :meth:`acquire` and :meth:`release`. In a job of several processes
    every process must call :meth:`acquire` (it is a collective: process 0 takes the lock and tells the
    others whether it could; all raise the same ``UserError`` if not).

    Args:
      workdir: the run directory (created if missing); a local path or a URL (``gs://...``).
      command: recorded as the holder's command line (default: this process's ``sys.argv``).
      log: called with the one-line report of a stale lock taken over (default: ``logging.warning``).
      process_index, process_count: this process and the job size (default: JAX's).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        command: str | None = None,
        log: Callable[[str], None] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        raw = os.fspath(workdir)
        self.is_url = "://" in raw
        self.workdir = raw if self.is_url else os.path.abspath(raw)
        self.path = (
            f"{self.workdir.rstrip('/')}/{LOCK_NAME}"
            if self.is_url
            else os.path.join(self.workdir, LOCK_NAME)
        )
        self._command = command
        self._log = log or logger.warning
        self._process_index = jax.process_index() if process_index is None else process_index
        self._process_count = jax.process_count() if process_count is None else process_count
        self._token: str | None = None  # the unique id in this process's lock record: "is it still mine?"
        self.held = False

    # -- public --

    def acquire(self) -> WorkdirLock:
        """Take the lock, or raise ``UserError`` naming the holder's pid, host and start time."""
        if self.held:
            return self
        failure, error = "", None
        if self._process_index == 0:
            try:
                self._acquire_url() if self.is_url else self._acquire_local()
            except OSError as e:  # e.g. a read-only or full disk: one line, like any bad workdir
                error = UserError(f"cannot write the lock file {self.path}: {e.strerror or e}")
                failure = str(error)
            except Exception as e:
                error, failure = e, str(e) if isinstance(e, UserError) else f"process 0: {type(e).__name__}"
        if self._process_count > 1:
            failure = _broadcast_failure(failure)  # (every process gets here, so none waits forever)
        if error is not None:
            raise error
        if failure:
            raise UserError(failure)
        self.held = self._process_index == 0
        return self

    def release(self) -> None:
        """Remove the lock file if it is still the one this process wrote (idempotent)."""
        if not self.held:
            return
        self.held = False
        if self.is_url:
            path = epath.Path(self.path)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("token") == self._token:
                    path.unlink()
            return
        try:
            _, raw = _read_nofollow(self.path)
        except OSError:
            return
        if (_parse_record(raw) or {}).get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- local files --

    def _refusal(self, holder: dict[str, Any]) -> UserError:
        return UserError(
            f"workdir {self.workdir} is in use by another run: pid {holder.get('pid')} on host "
            f"{holder.get('host')}, started {holder.get('start_time')} "
            f"({_one_line(holder.get('command', '?'), 120)}); wait for it to finish or stop it, or use "
            f"another --workdir (if that run is gone, delete {self.path})"
        )

    def _acquire_local(self) -> None:
        makedirs_in_workdir(self.workdir, "")
        record = _holder_record(self._command)
        self._token = record["token"] = uuid.uuid4().hex
        payload = (json.dumps(record) + "\n").encode()
        unreadable_since: float | None = None
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                pass
            else:
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return
            # Someone holds (or held) it.
            try:
                st, raw = _read_nofollow(self.path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UserError(
                        f"{self.path} is a symlink; remove it (jaxdiff does not follow it)"
                    ) from None
                raise
            holder = _parse_record(raw)
            if holder is None:
                # Just created by a racing run and not yet filled in, or damaged: give it a moment.
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since < _UNREADABLE_LOCK_GRACE_S:
                    time.sleep(0.05)
                    continue
                reason = "it is unreadable"
            else:
                reason = stale_reason(holder)
                if reason is None:
                    raise self._refusal(holder)
            if self._take_over(st, raw):
                self._log(
                    f"taking over the stale lock of workdir {self.workdir}: {_describe(holder, reason)}"
                )
            unreadable_since = None

    def _take_over(self, stale: os.stat_result, stale_raw: bytes) -> bool:
        """Remove the lock file judged stale (its stat and contents); False if another run replaced it
        meanwhile. The file is first renamed aside (atomic), so of several runs racing for a stale lock
        only one removes it; a run that moved a fresh lock instead puts it back."""
        aside = f"{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved, moved_raw = _read_nofollow(aside)
        # Inode numbers are reused at once on many file systems: the contents (a unique token) decide.
        if (moved.st_dev, moved.st_ino) == (stale.st_dev, stale.st_ino) and moved_raw == stale_raw:
            os.unlink(aside)
            return True
        # A racing run took the stale lock over first: put its lock back (link fails if one exists again).
        with contextlib.suppress(FileExistsError):
            os.link(aside, self.path)
        os.unlink(aside)
        return False

    # -- object stores --

    def _acquire_url(self) -> None:
        path = epath.Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            holder = _parse_record(path.read_bytes())
            reason = "it is unreadable" if holder is None else stale_reason(holder)
            if reason is None:
                raise self._refusal(holder)
            self._log(f"taking over the stale lock of workdir {self.workdir}: {_describe(holder, reason)}")
        record = _holder_record(self._command)
        self._token = record["token"] = uuid.uuid4().hex
        path.write_text(json.dumps(record) + "\n")


def _read_nofollow(path: str) -> tuple[os.stat_result, bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.fstat(fd), os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(holder: dict[str, Any] | None, reason: str) -> str:
    if holder is None:
        return reason
    return (
        f"{reason} (pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('start_time')})"
    )


def _broadcast_failure(failure: str) -> str:
    """Process 0's ``failure`` message (empty: none) on every process of the job."""
    encoded = np.zeros(1024, np.uint8)
    data = failure.encode()[: encoded.size]
    encoded[: len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    return bytes(received).rstrip(b"\0").decode(errors="replace")


# -- safe writes ------------------------------------------------------------------------------------------


def _is_url(workdir: str | os.PathLike) -> bool:
    return "://" in os.fspath(workdir)


def _parts(workdir: str, relpath: str | os.PathLike) -> list[str]:
    rel = os.fspath(relpath)
    parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if os.path.isabs(rel) or ".." in parts:
        raise UserError(
            f"{rel!r} is not a path inside the workdir {workdir} (absolute paths and '..' are not allowed)"
        )
    return parts


@contextlib.contextmanager
def _directory_fd(workdir: str | os.PathLike, parts: list[str], *, create: bool) -> Iterator[int]:
    """An open descriptor of ``workdir/parts...``, each component a real directory (not a symlink)."""
    root = os.fspath(workdir)
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walked = root
        for name in parts:
            walked = os.path.join(walked, name)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                _raise_if_symlink(e, walked, fd, name)
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _raise_if_symlink(error: OSError, path: str, dir_fd: int, name: str) -> None:
    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
        return
    try:
        is_link = (
            os.path.islink(path)
            or os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o170000 == 0o120000
        )
    except OSError:
        is_link = False
    if is_link:
        raise UserError(
            f"{path} is a symlink; jaxdiff writes a workdir's own files only as real files and directories "
            "inside it: remove the link"
        ) from None
    if error.errno == errno.ENOTDIR:
        raise UserError(f"{path} is not a directory; remove it or use another --workdir") from None


def makedirs_in_workdir(workdir: str | os.PathLike, reldir: str | os.PathLike) -> str:
    """Create ``workdir/reldir`` (and the workdir) as real directories; returns its path.

    Raises ``UserError`` naming the first component below the workdir that is a symlink or not a
    directory, or a ``reldir`` that is absolute or holds ``..``.
    """
    parts = _parts(os.fspath(workdir), reldir)
    if _is_url(workdir):
        path = epath.Path(os.fspath(workdir)).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return os.fspath(path)
    with _directory_fd(workdir, parts, create=True):
        pass
    return os.path.join(os.fspath(workdir), *parts)


_MODES = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def open_in_workdir(
    workdir: str | os.PathLike, relpath: str | os.PathLike, mode: str = "w", *, encoding: str | None = None
) -> IO[Any]:
    """``open(workdir/relpath, mode)`` that never follows a symlink below the workdir.

    Missing parent directories are created (modes ``w``, ``a``, ``x``). ``mode`` is ``r``, ``w``, ``a`` or
    ``x``, with ``b`` for bytes (text defaults to UTF-8). Raises ``UserError`` naming the path when it or a
    directory on the way is a symlink.
    """
    kind = mode.replace("b", "").replace("t", "")
    if kind not in _MODES:
        raise ValueError(f"mode {mode!r}: expected r, w, a or x, optionally with b")
    parts = _parts(os.fspath(workdir), relpath)
    if not parts:
        raise UserError(f"{os.fspath(relpath)!r} names no file inside the workdir {workdir}")
    *dirs, name = parts
    if _is_url(workdir):
        url = epath.Path(os.fspath(workdir)).joinpath(*parts)
        if kind != "r":
            url.parent.mkdir(parents=True, exist_ok=True)
        return url.open(mode) if "b" in mode else url.open(mode, encoding=encoding or "utf-8")
    path = os.path.join(os.fspath(workdir), *parts)
    with _directory_fd(workdir, dirs, create=kind != "r") as parent:
        try:
            fd = os.open(name, _MODES[kind] | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
        except OSError as e:
            _raise_if_symlink(e, path, parent, name)
            raise
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding=encoding or "utf-8")


def write_bytes_atomic(workdir: str | os.PathLike, relpath: str | os.PathLike, data: bytes) -> str:
    """Write ``workdir/relpath`` whole or not at all (a temporary file renamed over it); returns its path.

    Never follows a symlink below the workdir: a symlink at the path or on the way raises ``UserError``.
    """
    parts = _parts(os.fspath(workdir), relpath)
    if not parts:
        raise UserError(f"{os.fspath(relpath)!r} names no file inside the workdir {workdir}")
    *dirs, name = parts
    if _is_url(workdir):
        url = epath.Path(os.fspath(workdir)).joinpath(*parts)
        url.parent.mkdir(parents=True, exist_ok=True)
        url.write_bytes(data)  # an object store writes an object whole
        return os.fspath(url)
    path = os.path.join(os.fspath(workdir), *parts)
    tmp = f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with _directory_fd(workdir, dirs, create=True) as parent:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode & 0o170000 == 0o120000:
                raise UserError(
                    f"{path} is a symlink; jaxdiff writes a workdir's own files only as real files inside "
                    "it: remove the link"
                )
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # rename replaces a directory entry and never follows a link at the target.
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    return path


def write_text_atomic(workdir: str | os.PathLike, relpath: str | os.PathLike, text: str) -> str:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(workdir, relpath, text.encode("utf-8"))
