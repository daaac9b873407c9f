"""The train loop under hostile and unlucky conditions (issue: hardening): a workdir held by another run,
signals before the first step, symlinks planted in the workdir, a storage failure while saving, and a run
stopped during its final grid and export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from orbax.checkpoint._src.serialization import serialization as orbax_serialization

from jaxdiff.checkpointing import Checkpointer, CheckpointStorageError
from jaxdiff.errors import UserError
from jaxdiff.training import trainer
from jaxdiff.workdir import WorkdirLock
from tests.conftest import ROOT
from tests.test_training import assert_trees_equal, tiny_config

pytestmark = pytest.mark.slow  # whole (tiny) runs


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache):
    yield


def _signal_while_building(monkeypatch, *signals):
    """Send ``signals`` to this process while the run builds its model (before the first step)."""
    build = trainer.build_components

    def build_then_signal(*args, **kwargs):
        components = build(*args, **kwargs)
        for sig in signals:
            os.kill(os.getpid(), sig)
        return components

    monkeypatch.setattr(trainer, "build_components", build_then_signal)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_the_first_step_writes_nothing(tmp_path, monkeypatch, capsys, sig):
    _signal_while_building(monkeypatch, sig)
    result = trainer.train_and_evaluate(tiny_config(), tmp_path / "run")
    assert result.stopped_early and result.state is None and result.step == 0
    said = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(sig).name
    assert said[-1] == f"stopped by {name} before the first step: nothing written; run the same command again"
    assert not (tmp_path / "run").exists()


def test_a_second_ctrl_c_before_the_first_step_interrupts_at_once(tmp_path, monkeypatch):
    _signal_while_building(monkeypatch, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # train.py prints "interrupted" and exits 130
        trainer.train_and_evaluate(tiny_config(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_workdir_held_by_a_live_run_is_refused_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir, command="python train.py (the first run)", process_index=0, process_count=1):
        proc = subprocess.run(
            [sys.executable, "train.py", "--config", "tests/_tiny_config.py", "--workdir", str(workdir)],
            cwd=ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        assert f"pid {os.getpid()}" in lines[0] and "Traceback" not in proc.stderr
        assert sorted(os.listdir(workdir)) == [".lock"]  # nothing of the refused run


@pytest.mark.parametrize("planted", ["metrics.jsonl", "samples"])
def test_a_symlink_planted_in_the_workdir_is_refused_not_written_through(tmp_path, planted):
    workdir, outside = tmp_path / "run", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    (outside / "metrics.jsonl").write_text("precious\n")
    target = outside / "metrics.jsonl" if planted == "metrics.jsonl" else outside
    (workdir / planted).symlink_to(target)
    config = tiny_config(num_steps=2, sample_every=1)
    with pytest.raises(UserError, match="symbolic link|symlink") as err:
        trainer.train_and_evaluate(config, workdir)
    assert "\n" not in str(err.value) and planted in str(err.value)
    assert (
        os.listdir(outside) == ["metrics.jsonl"] and (outside / "metrics.jsonl").read_text() == "precious\n"
    )


def test_a_full_disk_while_saving_is_one_line_and_the_last_checkpoint_restores_bitwise(tmp_path, monkeypatch):
    config = tiny_config(num_steps=4, checkpoint_every=1, async_checkpointing=False)
    good = trainer.train_and_evaluate(config, tmp_path / "good", stop_at_step=2)
    saves = []
    real_save = Checkpointer.save

    def save_then_fill_the_disk(self, step, *args, **kwargs):
        saves.append(step)
        if step == 3:

            async def no_space(*a, **k):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(orbax_serialization, "async_serialize_from_host", no_space)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save_then_fill_the_disk)
    with pytest.raises(CheckpointStorageError) as err:
        trainer.train_and_evaluate(config, tmp_path / "full")
    message = str(err.value)
    assert "\n" not in message and "cannot save checkpoint 3" in message and "ENOSPC" in message
    assert "checkpoint 2 is intact" in message
    monkeypatch.undo()
    checkpoints = tmp_path / "full" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["1", "2"]  # no unfinished folder left
    with Checkpointer(checkpoints, read_only=True) as ckpt:
        components = trainer.build_components(config)
        restored = ckpt.restore(components.abstract_state)
    assert restored.step == 2
    assert_trees_equal(restored.state, good.state)


def test_a_run_stopped_during_its_final_grid_and_export_finishes_them_on_the_rerun(tmp_path):
    config = tiny_config(num_steps=2, sample_every=0)
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, workdir)
    grid = workdir / "samples" / "step_0000002.png"
    export = workdir / "diffusers" / "model_index.json"
    first_grid = grid.read_bytes()
    assert export.exists()
    # As if killed after the last checkpoint, before the grid and the export were written.
    grid.unlink()
    for path in sorted((workdir / "diffusers").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (workdir / "diffusers").rmdir()
    again = trainer.train_and_evaluate(config, workdir)
    assert (again.start_step, again.step) == (2, 2)
    assert grid.read_bytes() == first_grid and export.exists()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
