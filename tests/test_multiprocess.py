"""Two JAX processes on this machine train like one: ``jax.distributed`` over 127.0.0.1 with gloo CPU
collectives, 2 simulated CPU devices each (4 in all), each process decoding only its half of every
global batch.

Both processes run ``tests/_mp_worker.py``, which starts JAX the way ``train.py`` does
(``cli.maybe_initialize_distributed`` with an explicit coordinator) and trains the tiny config with
``train_and_evaluate``: 2 steps, stop (checkpoint), then a fresh pair of processes resumes to step 4.
A single process on one device trains the same 4 steps of the same global batch in one go.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests._mp_worker import (
    REPO,
    WORKER,
    assert_same_run,
    load_info,
    load_state,
    run_checked,
    subprocess_env,
)
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

TIMEOUT = 900  # seconds for each pair of processes; a hung collective fails the test


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(workdir, out_prefix, stop_at_step):
    """Run process 0 and 1 together; kill both if either fails or they outlive TIMEOUT.

    Without the persistent compilation cache: JAX would hand process 1 the CPU executable that process 0
    compiled and cached, which holds process 0's collective ranks, and the first all-reduce would hang.
    """
    port = _free_port()
    procs = []
    for pid in range(2):
        spec = {
            "distributed": {
                "coordinator_address": f"127.0.0.1:{port}",
                "num_processes": 2,
                "process_id": pid,
            },
            "runs": [{"workdir": str(workdir), "stop_at_step": stop_at_step, "out": f"{out_prefix}_p{pid}"}],
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, "train", json.dumps(spec)],
                cwd=REPO,
                env=subprocess_env(None, num_devices=2),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + TIMEOUT
    outputs = ["", ""]
    try:
        for i, proc in enumerate(procs):
            outputs[i] = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
            other = procs[1 - i]
            if proc.returncode != 0 and other.poll() is None:  # the other cannot go on alone
                os.killpg(other.pid, signal.SIGKILL)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for i, proc in enumerate(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                outputs[i] = proc.communicate()[0]
    codes = [proc.returncode for proc in procs]
    report = "".join(f"\n--- process {i} (exit {codes[i]}):\n{outputs[i]}" for i in range(2))
    assert codes == [0, 0], f"the two processes failed or outlived {TIMEOUT}s:{report}"
    return outputs


def test_two_processes_train_checkpoint_resume_like_one(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)
    single, multi = tmp_path / "single", tmp_path / "multi"
    spec = {"runs": [{"workdir": str(single), "stop_at_step": 4, "out": str(single)}]}
    run_checked(
        [sys.executable, WORKER, "train", json.dumps(spec)], subprocess_env(cache, 1), timeout=TIMEOUT
    )

    _run_pair(multi, tmp_path / "first", 2)
    for pid in range(2):
        info = load_info(tmp_path / f"first_p{pid}")
        assert (info["process_index"], info["process_count"]) == (pid, 2)
        assert (info["device_count"], info["local_device_count"]) == (4, 2)
        # Its own data shard: 4 of the 8 rows, the batch split over all 4 devices (2 of them local).
        assert info["batch"]["local_rows"] == 4 and info["batch"]["global_shape"] == [8, 8, 8, 1]
        assert info["batch"]["shard_shapes"] == [[2, 8, 8, 1]] * 2
        assert (info["start_step"], info["step"]) == (0, 2)
    rows = [np.load(tmp_path / f"first_p{pid}.batch.npy") for pid in range(2)]
    np.testing.assert_array_equal(np.concatenate(rows), np.load(f"{single}.batch.npy"))

    # One checkpoint at step 2, written by both processes (a data-iterator file each).
    checkpoint = multi / "checkpoints" / "2"
    assert sorted(os.listdir(checkpoint / "data")) == [
        "commit_success.txt",
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]

    outputs = _run_pair(multi, tmp_path / "resumed", 4)
    assert "resuming from the checkpoint at step 2" in outputs[0]
    states = [load_state(tmp_path / f"resumed_p{pid}") for pid in range(2)]
    for pid in range(2):
        info = load_info(tmp_path / f"resumed_p{pid}")
        assert (info["start_step"], info["step"]) == (2, 4)
        assert info["replicas_agree"]
    # Both processes hold bit-identical parameters, EMA and optimizer state...
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        np.testing.assert_array_equal(states[0][name], states[1][name], err_msg=name)
    # ... equal to the single-process run (up to the all-reduce's summation order).
    assert_same_run(states[0], load_state(single), "2 processes x 2 devices vs 1 device")
    # The same losses (logged by process 0), each step once across the restart.
    with open(single / "metrics.jsonl") as a, open(multi / "metrics.jsonl") as b:
        want, got = [json.loads(line) for line in a], [json.loads(line) for line in b]
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in want], rtol=1e-5)
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
