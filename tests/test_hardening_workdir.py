"""jaxdiff.workdir: one run per workdir (the lock, stale locks taken over) and writes that never follow a
symlink planted in the workdir."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxdiff import workdir as wd
from jaxdiff.errors import UserError
from jaxdiff.workdir import (
    LOCK_NAME,
    WorkdirLock,
    makedirs_in_workdir,
    open_in_workdir,
    write_bytes_atomic,
    write_text_atomic,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = """
import sys, time
from jaxdiff.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[1], command="holder-test", process_index=0, process_count=1).acquire()
print("HELD", flush=True)
time.sleep(600)
"""


def _lock(workdir, logs=None):
    return WorkdirLock(
        workdir, log=(logs.append if logs is not None else None), process_index=0, process_count=1
    )


def _write_lock(workdir, **fields):
    os.makedirs(workdir, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": "2026-01-01T00:00:00+00:00",
        "command": "an old run",
        "boot_id": wd._boot_id(),
        "proc_start": wd._process_start_ticks(os.getpid()),
        **fields,
    }
    with open(os.path.join(workdir, LOCK_NAME), "w") as f:
        json.dump(record, f)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_the_holder_and_a_second_acquire_is_refused(tmp_path):
    workdir = tmp_path / "run"
    with _lock(workdir) as lock:
        record = json.loads((workdir / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert {"start_time", "command", "boot_id", "proc_start"} <= record.keys()
        with pytest.raises(UserError) as err:
            _lock(workdir).acquire()
        message = str(err.value)
        assert "\n" not in message
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert record["start_time"] in message and str(workdir) in message
        assert lock.held
    assert not (workdir / LOCK_NAME).exists()
    with _lock(workdir):  # free again
        pass


def test_a_live_process_holds_the_lock_and_its_killed_lock_is_taken_over(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(UserError, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            _lock(workdir).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (workdir / LOCK_NAME).exists()  # left behind by the killed run
    logs = []
    with _lock(workdir, logs):
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(logs) == 1 and f"process {holder.pid} no longer runs" in logs[0], logs


@pytest.mark.skipif(wd._process_start_ticks(os.getpid()) is None, reason="needs /proc/<pid>/stat")
def test_a_reused_pid_or_a_reboot_makes_the_lock_stale(tmp_path):
    # This process is alive, but it is not the one that wrote the lock (another start time).
    _write_lock(tmp_path, proc_start=wd._process_start_ticks(os.getpid()) - 1)
    logs = []
    with _lock(tmp_path, logs):
        pass
    assert "now belongs to another process" in logs[0]
    _write_lock(tmp_path, boot_id="not-this-boot")
    logs.clear()
    with _lock(tmp_path, logs):
        pass
    assert "restarted" in logs[0]


def test_a_lock_from_another_host_is_held_and_a_dead_local_pid_is_not(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, pid=dead, host="some-other-host")
    with pytest.raises(UserError, match=f"pid {dead} on host some-other-host, started 2026-01-01"):
        _lock(tmp_path).acquire()
    _write_lock(tmp_path, pid=dead)
    logs = []
    with _lock(tmp_path, logs):
        pass
    assert f"process {dead} no longer runs" in logs[0]


def test_an_unreadable_lock_is_taken_over_after_a_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(wd, "_UNREADABLE_LOCK_GRACE_S", 0.2)
    (tmp_path / LOCK_NAME).write_text("")  # a run killed between creating and filling its lock
    logs = []
    start = time.monotonic()
    with _lock(tmp_path, logs):
        assert time.monotonic() - start >= 0.2
    assert "unreadable" in logs[0]


def test_release_and_takeover_touch_only_the_lock_they_judged(tmp_path):
    lock = _lock(tmp_path).acquire()
    os.unlink(tmp_path / LOCK_NAME)
    _write_lock(tmp_path, command="a newer run")  # another run's lock in its place
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "a newer run"
    # A takeover whose stale file was replaced by a racing run's lock leaves that lock in place.
    stale, stale_raw = os.stat(tmp_path / LOCK_NAME), (tmp_path / LOCK_NAME).read_bytes()
    os.unlink(tmp_path / LOCK_NAME)
    _write_lock(tmp_path, command="the racer")
    assert not _lock(tmp_path)._take_over(stale, stale_raw)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["command"] == "the racer"
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_safe_writes_create_real_files_and_refuse_symlinks(tmp_path):
    workdir = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open_in_workdir(workdir, "metrics.jsonl", "a") as f:
        f.write("1\n")
    with open_in_workdir(workdir, "metrics.jsonl", "a") as f:
        f.write("2\n")
    assert (workdir / "metrics.jsonl").read_text() == "1\n2\n"
    write_bytes_atomic(workdir, "samples/step_1.png", b"png")
    assert (workdir / "samples" / "step_1.png").read_bytes() == b"png"
    assert makedirs_in_workdir(workdir, "diffusers/unet") == str(workdir / "diffusers" / "unet")

    (elsewhere / "victim").write_text("keep")
    os.symlink(elsewhere / "victim", workdir / "config.json")
    os.unlink(workdir / "metrics.jsonl")
    os.symlink(elsewhere / "victim", workdir / "metrics.jsonl")
    os.symlink(elsewhere, workdir / "images")
    cases = [
        (lambda: open_in_workdir(workdir, "metrics.jsonl", "a"), "metrics.jsonl"),
        (lambda: write_text_atomic(workdir, "config.json", "{}"), "config.json"),
        (lambda: write_bytes_atomic(workdir, "images/step_2.png", b"x"), "images"),
        (lambda: open_in_workdir(workdir, "images/a/b.txt", "w"), "images"),
        (lambda: makedirs_in_workdir(workdir, "images/sub"), "images"),
    ]
    for write, name in cases:
        with pytest.raises(UserError) as err:
            write()
        assert f"{workdir / name} is a symlink" in str(err.value) and "\n" not in str(err.value)
    assert (elsewhere / "victim").read_text() == "keep"
    assert sorted(os.listdir(elsewhere)) == ["victim"]

    (workdir / "plain").write_text("")
    with pytest.raises(UserError, match="plain is not a directory"):
        write_bytes_atomic(workdir, "plain/x", b"")
    for bad in ("../x", "/etc/x", "samples/../../x"):
        with pytest.raises(UserError, match="not a path inside the workdir"):
            open_in_workdir(workdir, bad, "w")


def test_a_symlinked_workdir_itself_is_the_users_choice(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    write_text_atomic(tmp_path / "link", "config.json", "{}")
    with _lock(tmp_path / "link"):
        assert (tmp_path / "real" / LOCK_NAME).exists()
    assert (tmp_path / "real" / "config.json").read_text() == "{}"


# Each of two JAX processes (jax.distributed over 127.0.0.1) takes the lock: process 0 for the job.
TWO_PROCESSES = """
import json, os, sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
from jaxdiff.errors import UserError
from jaxdiff.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[3], command="job")
try:
    lock.acquire()
    result = {"held": lock.held, "lock_pid": lock.held and json.load(open(lock.path))["pid"] == os.getpid()}
    lock.release()
except UserError as e:
    result = {"error": str(e)}
print("RESULT " + json.dumps(result), flush=True)
jax.distributed.shutdown()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(port), str(i), str(workdir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    return results


def test_in_a_multi_process_job_process_0_holds_the_lock_and_all_learn_a_refusal(tmp_path):
    results = _two_processes(tmp_path / "free")
    assert results == [{"held": True, "lock_pid": True}, {"held": False, "lock_pid": False}]
    assert not (tmp_path / "free" / LOCK_NAME).exists()  # released by process 0
    with _lock(tmp_path / "taken"):
        results = _two_processes(tmp_path / "taken")
    assert results[0] == results[1] and f"pid {os.getpid()}" in results[0]["error"], results


def test_a_workdir_that_cannot_hold_a_lock_file_is_one_line(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # not a file: O_CREAT | O_EXCL fails, and so does reading it
    message = str(pytest.raises(UserError, _lock(tmp_path).acquire).value)
    assert message.startswith(f"cannot write the lock file {tmp_path / LOCK_NAME}") and "\n" not in message
