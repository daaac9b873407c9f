"""Stopping and restarting a run loses nothing and changes nothing.

- exact resume: 4 steps in one go and 2 + restart (a new process) + 2 give bit-identical parameters,
  EMA, optimizer state, step and RNG, and the same losses;
- SIGTERM (a preempted TPU VM) on a real ``train.py``: a checkpoint at the current step, exit 0; the same
  command resumes there;
- SIGKILL in the middle of a checkpoint write (orbax's commit of checkpoint 4 is held back by a hook):
  checkpoint 2 stays usable, the partial write is reported and ignored;
- damaged latest checkpoints (array files truncated, metadata deleted) are reported, set aside, and the
  run resumes from the newest good one, exactly as if it had never gone further;
- a non-finite loss stops ``train.py`` with one line naming the step, exit 2, last good checkpoint kept.

All runs use the tiny config (``tests/_tiny_config.py``: checkpoints every 2 steps, dropout on).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests._mp_worker import (
    HANG_MARKER,
    REPO,
    TINY_CONFIG,
    WORKER,
    load_info,
    load_state,
    run_checked,
    subprocess_env,
)
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

TIMEOUT = 600


def _train(runs, cache):
    spec = json.dumps({"runs": runs})
    return run_checked([sys.executable, WORKER, "train", spec], subprocess_env(cache), timeout=TIMEOUT)


def _train_py(workdir, *flags):
    return [sys.executable, "train.py", "--config", TINY_CONFIG, "--workdir", str(workdir), *flags]


def _metric_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def _checkpoints(workdir):
    return sorted(os.listdir(workdir / "checkpoints"))


class _Process:
    """A child process with its output in files, killed (whole group) if the test leaves it running."""

    def __init__(self, cmd, env, log_prefix):
        self.out_path, self.err_path = f"{log_prefix}.out", f"{log_prefix}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True
            )

    def output(self):
        with open(self.out_path) as out, open(self.err_path) as err:
            return out.read(), err.read()

    def wait_until(self, condition, what):
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}: {self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} after {TIMEOUT}s: {self.output()}")
            time.sleep(0.2)

    def wait(self):
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit in {TIMEOUT}s: {self.output()}") from None

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def assert_identical(got, want, what):
    assert got.keys() == want.keys(), what
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{what}: {name}")


def test_resume_is_exact(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train(
        [
            {"workdir": str(whole), "stop_at_step": 4, "out": str(whole)},
            {"workdir": str(split), "stop_at_step": 2, "out": str(tmp_path / "half")},
        ],
        cache,
    )
    assert load_info(tmp_path / "half")["step"] == 2
    _train([{"workdir": str(split), "stop_at_step": 4, "out": str(split)}], cache)  # a new process

    info = load_info(split)
    assert (info["start_step"], info["step"]) == (2, 4)
    state = load_state(split)
    assert any(k.startswith("opt_state/") for k in state) and any(k.startswith("ema_params/") for k in state)
    assert_identical(state, load_state(whole), "2 + restart + 2 vs 4 steps")
    # The same batches and noise: the same losses, bit for bit; each step logged once.
    with open(whole / "metrics.jsonl") as a, open(split / "metrics.jsonl") as b:
        whole_losses = [(m["step"], m["loss"]) for m in map(json.loads, a)]
        split_losses = [(m["step"], m["loss"]) for m in map(json.loads, b)]
    assert whole_losses == split_losses and [s for s, _ in whole_losses] == [1, 2, 3, 4]


def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes(tmp_path, tmp_path_factory):
    env = subprocess_env(shared_cache_dir(tmp_path_factory))
    workdir = tmp_path / "run"
    cmd = _train_py(workdir, "--config.train.checkpoint_every=0")  # no periodic checkpoints at all
    proc = _Process(cmd, env, tmp_path / "first")
    proc.wait_until(lambda: len(_metric_steps(workdir)) >= 2, "two logged steps")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.output()
    _, err = proc.output()
    assert "Traceback" not in err
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", err)
    assert stopped, err
    step = int(stopped.group(1))
    assert step >= 2 and _checkpoints(workdir) == [str(step)]
    assert _metric_steps(workdir) == list(range(1, step + 1))

    # The same command (trained one step further) resumes from that checkpoint and finishes.
    rerun = run_checked([*cmd, f"--config.train.num_steps={step + 1}"], env, timeout=TIMEOUT)
    assert f"resuming from the checkpoint at step {step}" in rerun.stderr
    assert _checkpoints(workdir) == sorted([str(step), str(step + 1)])
    assert _metric_steps(workdir) == list(range(1, step + 2))
    assert (workdir / "diffusers" / "model_index.json").exists()


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, tmp_path_factory):
    env = subprocess_env(shared_cache_dir(tmp_path_factory))
    workdir = tmp_path / "run"
    train_args = _train_py(workdir)[2:]
    cmd = [sys.executable, WORKER, "cli", "--hang_at_step", "4", "--", *train_args]
    proc = _Process(cmd, env, tmp_path / "hung")
    proc.wait_until(lambda: HANG_MARKER in proc.output()[0], "checkpoint 4 being written")
    proc.kill()
    assert proc.proc.returncode == -signal.SIGKILL

    names = _checkpoints(workdir)
    partial = [n for n in names if n.startswith("4.orbax-checkpoint-tmp")]
    assert "2" in names and "4" not in names and len(partial) == 1, names
    assert (workdir / "checkpoints" / partial[0] / "state").is_dir()  # the write had begun

    rerun = run_checked([*_train_py(workdir), "--config.train.num_steps=3"], env, timeout=TIMEOUT)
    assert "incomplete checkpoint write for step 4" in rerun.stderr, rerun.stderr
    assert "resuming from the checkpoint at step 2" in rerun.stderr, rerun.stderr
    assert _checkpoints(workdir) == ["2", "3"]  # the partial write is gone
    assert _metric_steps(workdir) == [1, 2, 3]


def _damage(checkpoint):
    """Truncate every array data file (and chunk index) of the state to half its size."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(checkpoint / "state") for f in fs]
    data = [f for f in files if os.sep + "d" + os.sep in f]
    assert data, files
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_checkpoints_fall_back_to_the_newest_good_one(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)
    run, reference = tmp_path / "run", tmp_path / "reference"
    _train(
        [
            {"workdir": str(run), "stop_at_step": 6, "out": str(tmp_path / "six")},
            {"workdir": str(reference), "stop_at_step": 3, "out": str(reference)},
        ],
        cache,
    )
    assert _checkpoints(run) == ["2", "4", "6"]
    _damage(run / "checkpoints" / "6")  # array data cut short
    for path in (run / "checkpoints" / "4" / "meta").iterdir():  # the run record deleted
        path.unlink()

    resumed = _train([{"workdir": str(run), "stop_at_step": 3, "out": str(run)}], cache)
    for step in (6, 4):
        assert f"checkpoint {step} is damaged or incomplete" in resumed.stderr, resumed.stderr
    assert "resuming from the checkpoint at step 2" in resumed.stderr
    assert _checkpoints(run) == ["2", "3"]
    set_aside = os.listdir(run / "checkpoints.damaged")
    assert sorted(n.split("-")[0] for n in set_aside) == ["4", "6"]
    # Exactly the run that never went past step 2.
    assert (load_info(run)["start_step"], load_info(run)["step"]) == (2, 3)
    assert_identical(load_state(run), load_state(reference), "resumed from 2 after damage vs 3 steps")


def test_non_finite_loss_stops_with_the_step_and_keeps_the_good_checkpoints(tmp_path, tmp_path_factory):
    env = subprocess_env(shared_cache_dir(tmp_path_factory))
    workdir = tmp_path / "run"
    cmd = _train_py(workdir, "--config.train.learning_rate=1e30", "--config.train.checkpoint_every=1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    pattern = r"error: the loss is not finite \(.*\) at step (\d+); .*last good checkpoint: step (\d+).*"
    found = re.fullmatch(pattern, last)
    assert found, proc.stderr
    bad, kept = int(found.group(1)), int(found.group(2))
    assert kept == bad - 1 and _checkpoints(workdir) == [str(s) for s in range(max(1, bad - 3), bad)]

    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(kept) / "state")
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert leaves and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")
