"""One device or eight: the sharded train step computes the same training run.

The device count is fixed when JAX starts, so each configuration trains in a fresh process
(``tests/_mp_worker.py``) through ``train_and_evaluate`` (what ``train.py`` runs), 3 steps of the tiny
config (``tests/_tiny_config.py``, global batch 8, dropout on):

- 1 CPU device;
- 8 simulated CPU devices, mesh ``data=8`` (pure data parallelism);
- 8 simulated CPU devices, mesh ``data=4 x fsdp=2`` (parameters sharded);
- microbatches, without dropout at global batch 16: 1 device in 4 passes of 4 images against 8 devices
  in 2 passes of 1 image each.

Only the summation order of the gradient's all-reduce differs, so the losses agree to float rounding.
AdamW divides each gradient element by its running RMS, which turns a rounding-level difference of a
near-zero gradient element into a visible one in its update; parameters are therefore required to agree
to a small fraction of one update (the learning rate), and the optimizer moments to float rounding.
"""

import json
import sys

import numpy as np
import pytest

from tests._mp_worker import (
    WORKER,
    assert_same_run,
    load_info,
    load_state,
    run_checked,
    subprocess_env,
)
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # end to end: subprocesses, whole runs

STEPS = 3


def _train(runs, cache, num_devices):
    spec = json.dumps({"runs": runs})
    run_checked([sys.executable, WORKER, "train", spec], subprocess_env(cache, num_devices), timeout=900)


def _losses(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["loss"] for line in f]


def test_eight_devices_and_fsdp_match_one_device(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)
    one, dp, fsdp = tmp_path / "one", tmp_path / "dp", tmp_path / "fsdp"
    micro_one, micro_eight = tmp_path / "micro_one", tmp_path / "micro_eight"
    micro = {"model.dropout": 0.0, "train.batch_size": 16}

    def run(path, **overrides):
        return {"workdir": str(path), "stop_at_step": STEPS, "out": str(path), "overrides": overrides}

    _train([run(one), run(micro_one, **micro, **{"train.microbatch_size": 4})], cache, 1)
    _train(
        [run(dp), run(fsdp, **{"train.fsdp": 2}), run(micro_eight, **micro, **{"train.microbatch_size": 1})],
        cache,
        8,
    )
    np.testing.assert_allclose(_losses(micro_eight), _losses(micro_one), rtol=1e-5)
    assert_same_run(load_state(micro_eight), load_state(micro_one), "microbatches on 8 devices")
    ref_state, ref_info = load_state(one), load_info(one)
    assert ref_info["device_count"] == 1 and ref_info["step"] == STEPS
    ref_losses = _losses(one)
    assert len(ref_losses) == STEPS

    for run, mesh in ((dp, {"data": 8, "fsdp": 1}), (fsdp, {"data": 4, "fsdp": 2})):
        info = load_info(run)
        assert info["device_count"] == 8 and info["mesh_shape"] == mesh and info["step"] == STEPS

        # The batch is split: each of the 8 devices holds 1 of the 8 rows.
        batch = info["batch"]
        assert batch["global_shape"] == [8, 8, 8, 1] and batch["devices"] == 8
        assert batch["shard_shapes"] == [[1, 8, 8, 1]] * 8

        # Same losses, same parameters / EMA / optimizer state as on one device.
        np.testing.assert_allclose(_losses(run), ref_losses, rtol=1e-5, err_msg=str(mesh))
        assert_same_run(load_state(run), ref_state, str(mesh))
        assert info["replicas_agree"], f"{mesh}: devices hold different copies of a replicated array"

    # Data parallelism alone: every parameter whole on every device.
    assert all(p["fully_replicated"] for p in load_info(dp)["params"].values())

    # FSDP: parameters split in two along the fsdp axis; only arrays with no even dimension stay whole.
    params = load_info(fsdp)["params"]
    for name, p in params.items():
        if any(d % 2 == 0 for d in p["global_shape"]):
            assert "fsdp" in p["spec"], f"{name} {p} is not sharded"
            assert np.prod(p["shard_shape"]) * 2 == np.prod(p["global_shape"]), f"{name} {p}"
        else:
            assert p["fully_replicated"], f"{name} {p}"
    assert sum("fsdp" in p["spec"] for p in params.values()) > len(params) // 2
