"""Storage failures while saving a checkpoint (jaxdiff.checkpointing): a full disk, a read-only file system, a
quota or missing permission become one ``CheckpointStorageError`` line naming the checkpoint path and the
cause, raised after orbax's background threads stopped; the unfinished temporary folder is removed and the
previous checkpoint restores bitwise.

Where this process may mount (root in a container or VM), the failures are real: a 3 MB tmpfs, and a tmpfs
remounted read-only (root ignores file modes, so ``chmod`` cannot make one). Everywhere, the same failures
are also injected under orbax's array writer, in its background thread.
"""

import contextlib
import errno
import gc
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from orbax.checkpoint._src.serialization import serialization as orbax_serialization

from jaxdiff.checkpointing import Checkpointer, CheckpointStorageError, storage_failure
from jaxdiff.errors import UserError

# A failed save leaves orbax's never-started coroutines behind; the Checkpointer silences their warning in
# the process (see _fail), pytest restores filters after each test: collect them here, under this filter.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")


@pytest.fixture(autouse=True)
def _collect_leftover_coroutines():
    yield
    gc.collect()


# What TensorStore (orbax's writer) raised on a full 3 MB tmpfs, abridged.
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "big/0" in OCDBT database at local file "{dir}": Failed writing: '
    "\"{dir}/d/ce50\": Failed to write 2486272 bytes to file 5: No space left on device [os_error_code='28']"
)


def _state(seed, n=1000):
    key = jax.random.key(seed)
    return {"w": jax.random.normal(key, (n,)), "b": jnp.arange(7, dtype=jnp.int32) + seed}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _assert_restores_bitwise(directory, step, state):
    with Checkpointer(directory, read_only=True) as ckpt:
        restored = ckpt.restore(_abstract(state))
    assert restored.step == step
    for name in state:
        np.testing.assert_array_equal(np.asarray(restored.state[name]), np.asarray(state[name]))


def _assert_one_line(error, *parts):
    message = str(error)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


@contextlib.contextmanager
def _tmpfs(path, size):
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, caplog, async_save):
    with _tmpfs(tmp_path / "disk", "3m") as disk:
        directory = disk / "checkpoints"
        ckpt = Checkpointer(directory, async_save=async_save)
        good = _state(1)
        ckpt.save(1, good)
        ckpt.wait()
        too_big = dict(_state(2), big=jax.random.normal(jax.random.key(3), (1_500_000,)))  # 6 MB, random
        with caplog.at_level(logging.ERROR), pytest.raises(CheckpointStorageError) as err:
            ckpt.save(2, too_big)
            ckpt.wait()
        _assert_one_line(
            err.value,
            f"cannot save checkpoint 2 to {directory}/2: no space left on the device (ENOSPC)",
            "checkpoint 1 is intact",
            f"removed the unfinished {directory}/2.orbax-checkpoint-tmp",
            f"free space on the disk of {directory}",
        )
        assert not [r for r in caplog.records if r.exc_info], "orbax's tracebacks were not dropped"
        assert sorted(os.listdir(directory)) == ["1"]
        ckpt.close()  # closed by the failure: a no-op
        _assert_restores_bitwise(directory, 1, good)


def test_a_read_only_file_system_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    with _tmpfs(tmp_path / "disk", "8m") as disk:
        directory = disk / "checkpoints"
        ckpt = Checkpointer(directory)
        good = _state(1)
        ckpt.save(1, good)
        ckpt.wait()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        ckpt.save(2, _state(2))  # the failure surfaces in the background thread ...
        with pytest.raises(CheckpointStorageError) as err:
            ckpt.save(3, _state(3))  # ... and is reported at the next save, naming checkpoint 2
        _assert_one_line(
            err.value,
            f"cannot save checkpoint 2 to {directory}/2: read-only file system (EROFS)",
            "checkpoint 1 is intact",
            f"make {directory} writable",
        )
        assert sorted(os.listdir(directory)) == ["1"]
        _assert_restores_bitwise(directory, 1, good)
        with pytest.raises(CheckpointStorageError, match="cannot use the checkpoint directory .*read-only"):
            Checkpointer(disk / "other")


@pytest.mark.parametrize(
    "error, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device (ENOSPC)"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded (EDQUOT)"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied (EACCES)"),
        (PermissionError(errno.EPERM, "Operation not permitted"), "operation not permitted (EPERM)"),
        (ValueError(TENSORSTORE_ENOSPC), "no space left on the device (ENOSPC)"),
    ],
    ids=["ENOSPC", "EDQUOT", "EACCES", "EPERM", "tensorstore"],
)
def test_storage_failures_in_orbaxs_writer_thread_are_one_line(tmp_path, monkeypatch, caplog, error, cause):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory)
    good = _state(1)
    ckpt.save(1, good)
    ckpt.wait()

    async def failing_write(*args, **kwargs):
        raise error

    monkeypatch.setattr(orbax_serialization, "async_serialize_from_host", failing_write)
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointStorageError) as err:
        ckpt.save(2, _state(2))
        ckpt.close()
    _assert_one_line(
        err.value, f"cannot save checkpoint 2 to {directory}/2: {cause}", "checkpoint 1 is intact"
    )
    assert isinstance(err.value, UserError)
    assert not [r for r in caplog.records if r.exc_info]
    assert sorted(os.listdir(directory)) == ["1"]
    monkeypatch.undo()
    _assert_restores_bitwise(directory, 1, good)


def test_an_unfinished_folder_that_cannot_be_removed_is_reported(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory)

    async def failing_write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing_rmtree(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(orbax_serialization, "async_serialize_from_host", failing_write)
    monkeypatch.setattr(type(epath.Path(directory)), "rmtree", failing_rmtree)
    with pytest.raises(CheckpointStorageError) as err:
        ckpt.save(1, _state(1))
        ckpt.wait()
    _assert_one_line(
        err.value,
        "no space left on the device (ENOSPC); there is no earlier checkpoint",
        f"could not remove the unfinished {directory}/1.orbax-checkpoint-tmp (read-only file system (EROFS))",
    )


def test_other_failures_are_not_storage_failures():
    assert storage_failure(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")) is None
    assert storage_failure(FileNotFoundError(errno.ENOENT, "No such file or directory")) is None
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = ValueError(TENSORSTORE_ENOSPC)
    assert storage_failure(wrapped) == "no space left on the device (ENOSPC)"


# A command-line tool's view: the whole stderr of a process whose save fails is the one error line.
CLI = """
import errno, subprocess, sys
import jax, jax.numpy as jnp
from orbax.checkpoint._src.serialization import serialization
from jaxdiff.checkpointing import Checkpointer
from jaxdiff.errors import UserError

directory, how = sys.argv[1], sys.argv[2]
try:
    ckpt = Checkpointer(directory + "/checkpoints")
    ckpt.save(1, {"w": jnp.arange(8.0)})
    ckpt.wait()
    if how == "remount":
        subprocess.run(["mount", "-o", "remount,ro", directory], check=True)
    else:
        async def failing_write(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        serialization.async_serialize_from_host = failing_write
    ckpt.save(2, {"w": jnp.arange(8.0) + 1})
    ckpt.close()
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("how", ["remount", "inject"])
def test_a_failed_save_prints_only_the_error_line_and_exits(tmp_path, how):
    context = _tmpfs(tmp_path / "disk", "8m") if how == "remount" else contextlib.nullcontext(tmp_path)
    with context as directory:
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)), JAX_PLATFORMS="cpu")
        done = subprocess.run(
            [sys.executable, "-c", CLI, str(directory), how],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        cause = "read-only file system (EROFS)" if how == "remount" else "permission denied (EACCES)"
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(
            f"error: cannot save checkpoint 2 to {directory}/checkpoints/2: {cause}"
        )
        assert done.stderr.count("\n") == 1, done.stderr
        assert sorted(os.listdir(directory / "checkpoints")) == ["1"]
