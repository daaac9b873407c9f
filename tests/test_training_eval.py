"""Evaluation during training (``train.eval_every``): the scores logged where the run's metrics go, the best
checkpoint kept beside the newest, wandb offline, and refusals of settings that cannot be measured."""

from __future__ import annotations

import json
import os

import pytest

from jaxdiff.checkpointing import Checkpointer
from jaxdiff.errors import UserError
from jaxdiff.evaluation.digits import digits_metric
from jaxdiff.run_config import validate_config
from jaxdiff.training.trainer import train_and_evaluate
from tests.test_training import tiny_config


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache):
    yield


def _eval_config(**train):
    config = tiny_config(
        num_steps=4,
        checkpoint_every=1,
        keep_checkpoints=1,
        eval_every=2,
        eval_num_samples=8,
        **train,
    )
    config.sample.num_inference_steps = 2
    return config


def test_scores_are_logged_and_the_best_checkpoint_is_kept(tmp_path, capsys):
    config = _eval_config()
    said = []
    result = train_and_evaluate(config, tmp_path)
    said = capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval/digits_fd" in line]
    assert [line["step"] for line in evals] == [2, 4]
    floor = digits_metric().floor
    for line in evals:
        assert line["eval/digits_floor"] == pytest.approx(floor)
        assert line["eval/digits_fd"] > 0 and line["eval/digits_kid_mean"] == line["eval/digits_kid_mean"]
    assert f"step 4: digits FD {evals[1]['eval/digits_fd']:.3f} (real-vs-real floor {floor:.3f}" in said
    assert os.path.isdir(tmp_path / "tensorboard")
    # keep_checkpoints=1 keeps the newest (4); the better-scored eval step stays too.
    best = min(evals, key=lambda line: line["eval/digits_fd"])["step"]
    with Checkpointer(tmp_path / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == sorted({4, best})
    assert result.step == 4


def test_wandb_offline_gets_the_scalars_and_the_grids(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = _eval_config(wandb_project="jaxdiff-test", sample_every=2)
    config.train.num_steps = 2
    train_and_evaluate(config, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = (runs[0] / f"run-{(tmp_path / 'wandb_run_id').read_text()}.wandb").read_bytes()
    for name in (b"train/loss", b"eval/digits_fd", b"samples"):
        assert name in logged, name


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"train.eval_metric": "psnr"}, "train.eval_metric='psnr' is not allowed"),
        ({"train.eval_metric": "inception"}, "train.eval_ref_stats='' is not allowed"),
    ],
)
def test_settings_that_cannot_be_measured_are_refused(changes, message):
    config = _eval_config()
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=message):
        validate_config(config)


def test_the_digits_metric_is_off_for_other_data_with_one_line():
    from jaxdiff.run_config import parse_run_config

    config = _eval_config()
    config.data.image_size = 32
    said = []
    assert parse_run_config(config, log=said.append).train.eval_every == 0
    assert len(said) == 1 and "no evaluation during training" in said[0]
    assert parse_run_config(_eval_config(), log=said.append).train.eval_every == 2
