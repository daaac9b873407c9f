"""Training with each objective: it runs, exports and samples; 1 and 8 devices agree; resume is exact.

- in-process (``train_and_evaluate``, ``tests/test_training.py``'s tiny config, 3 steps): EDM and flow
  train with finite losses, export their diffusers scheduler, and load back to sample finite images;
- slow, in subprocesses (``tests/_mp_worker.py``, the tiny config with dropout): for ``edm`` and ``flow``,
  4 steps on 8 simulated devices equal 4 steps on one (to all-reduce rounding, ``assert_same_run``), and
  2 + 2 steps (resumed from the checkpoint) equal 4 steps bit for bit.
"""

import json
import sys

import jax
import numpy as np
import pytest

from jaxdiff.inference import load_workdir
from jaxdiff.training.trainer import train_and_evaluate
from tests._mp_worker import WORKER, assert_same_run, load_state, run_checked, subprocess_env
from tests.conftest import shared_cache_dir
from tests.test_training import tiny_config

SAMPLERS = {"edm": ("edm", "EDMEulerScheduler"), "flow": ("flow_euler", "FlowMatchEulerDiscreteScheduler")}


@pytest.fixture(scope="module", autouse=True)
def _module_compilation_cache(compilation_cache):
    yield


@pytest.mark.slow  # two tiny trainings with export and sampling: about 30 s each on 2 cores
@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_training_with_the_objective_runs_exports_and_samples(objective, tmp_path):
    sampler, scheduler_class = SAMPLERS[objective]
    config = tiny_config(num_steps=3, checkpoint_every=3, eval_every=0)
    config.diffusion.objective = objective
    config.sample.sampler = sampler
    result = train_and_evaluate(config, tmp_path)
    assert (result.step, result.stopped_early) == (3, False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [m["loss"] for m in map(json.loads, lines) if "loss" in m]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    saved = json.loads((tmp_path / "diffusers" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == scheduler_class

    model = load_workdir(tmp_path)
    assert model.objective.name == objective and model.default_sampler == sampler
    fn = model.sample_fn(sampler=sampler, num_inference_steps=2, batch_size=2)
    images = np.asarray(fn.fn(model.params, jax.random.PRNGKey(0), 0))
    assert images.shape == (2, 16, 16, 1) and np.all(np.isfinite(images))


def _train(runs, cache, num_devices):
    spec = json.dumps({"runs": runs})
    run_checked([sys.executable, WORKER, "train", spec], subprocess_env(cache, num_devices), timeout=900)


@pytest.mark.slow
def test_each_objective_on_eight_devices_and_resumed_is_the_same_run(tmp_path, tmp_path_factory):
    cache = shared_cache_dir(tmp_path_factory)

    def run(objective, name, stop_at_step):
        path = tmp_path / f"{objective}_{name}"
        overrides = {"diffusion.objective": objective, "sample.sampler": SAMPLERS[objective][0]}
        return {"workdir": str(path), "stop_at_step": stop_at_step, "out": str(path), "overrides": overrides}

    one_device = []
    for objective in SAMPLERS:
        half = run(objective, "split", 2)
        half["out"] += "_half"
        one_device += [run(objective, "whole", 4), half, run(objective, "split", 4)]
    _train(one_device, cache, 1)
    _train([run(objective, "eight", 4) for objective in SAMPLERS], cache, 8)

    for objective in SAMPLERS:
        whole = load_state(tmp_path / f"{objective}_whole")
        assert int(whole["step"]) == 4
        split = load_state(tmp_path / f"{objective}_split")
        assert whole.keys() == split.keys()
        for name in whole:  # resumed from the checkpoint at step 2: bit for bit
            np.testing.assert_array_equal(split[name], whole[name], err_msg=f"{objective}: {name}")
        assert_same_run(load_state(tmp_path / f"{objective}_eight"), whole, f"{objective} on 8 devices")
