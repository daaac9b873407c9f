"""Label dropout on one device and on eight: the same training run (issue 23).

The coins of ``train.cond_drop_prob`` are drawn from the step's key over the global batch, so 1 and 8
simulated devices (fresh processes, ``tests/_mp_worker.py``) drop the same labels and train the same
parameters up to the all-reduce's summation order. A run without dropout is trained beside them to show
that the dropout changes the result (so agreement is not vacuous).
"""

import json
import sys

import numpy as np
import pytest

from tests._mp_worker import WORKER, assert_same_run, load_state, run_checked, subprocess_env
from tests.conftest import shared_cache_dir

pytestmark = pytest.mark.slow  # subprocesses, whole runs

STEPS = 3
CONDITIONAL = {"data.num_classes": 10, "model.dropout": 0.0}


def _train(runs, cache, num_devices):
    spec = json.dumps({"runs": runs})
    run_checked([sys.executable, WORKER, "train", spec], subprocess_env(cache, num_devices), timeout=900)


def test_label_dropout_is_the_same_on_one_and_eight_devices(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)

    def run(path, drop):
        overrides = {**CONDITIONAL, "train.cond_drop_prob": drop}
        return {"workdir": str(path), "stop_at_step": STEPS, "out": str(path), "overrides": overrides}

    one, eight, no_drop = tmp_path / "one", tmp_path / "eight", tmp_path / "no_drop"
    _train([run(one, 0.5), run(no_drop, 0.0)], cache, 1)
    _train([run(eight, 0.5)], cache, 8)
    assert_same_run(load_state(eight), load_state(one), "label dropout on 8 devices")
    params = [k for k in load_state(one) if k.startswith("params/")]
    assert any(not np.allclose(load_state(one)[k], load_state(no_drop)[k]) for k in params)
