"""Runs the real training code in a fresh process for the scale / multi-process / resume tests.

Importing this module is cheap (no JAX): the tests use ``subprocess_env`` and ``run_checked`` from it.
Run as a script it has two commands:

``python tests/_mp_worker.py train SPEC_JSON``
    ``SPEC_JSON`` is ``{"runs": [...], "distributed": {...} | null}``. With ``distributed`` set it first
    calls ``jaxdiff.cli.maybe_initialize_distributed`` (what ``train.py`` calls). Then, for each
    run ``{"workdir", "stop_at_step", "overrides": {"train.fsdp": 2, ...}, "out"}``, it trains
    ``tests/_tiny_config.py`` with ``jaxdiff.training.trainer.train_and_evaluate`` (the function ``train.py``
    runs) and writes ``<out>.npz`` (this process's copy of every leaf of the final train state,
    keyed ``params/...``, ``opt_state/...``, ``ema_params/...``, ``step``, ``rng``), ``<out>.json`` (run
    and sharding facts: shard shapes of a batch and of the parameters, whether local replicas agree) and
    ``<out>.batch.npy`` (this process's rows of the first global batch).

``python tests/_mp_worker.py cli --hang_at_step N -- TRAIN_PY_ARGS...``
    Runs ``train.py`` (its ``__main__``) with orbax's final commit of checkpoint ``N`` blocked forever, after
    printing ``C3_HANGING_IN_CHECKPOINT_WRITE <tmp dir>`` on stdout: the test then SIGKILLs the process in
    the middle of that checkpoint write.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from typing import Any

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
WORKER = os.path.abspath(__file__)
TINY_CONFIG = os.path.join(TESTS, "_tiny_config.py")
HANG_MARKER = "C3_HANGING_IN_CHECKPOINT_WRITE"


def load_tiny_config() -> Any:
    """``tests/_tiny_config.py``'s config, loaded from its path (this file also runs as a script)."""
    spec = importlib.util.spec_from_file_location("_jaxdiff_tiny_config", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def subprocess_env(cache_dir: str | os.PathLike | None, num_devices: int = 1) -> dict[str, str]:
    """The environment of a child JAX process: CPU only, ``num_devices`` simulated devices, and a
    persistent compilation cache shared by the tests (the same tiny train step compiles once)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    env.update(
        XLA_FLAGS=" ".join(flags),
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    if cache_dir is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=os.fspath(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        )
    return env


def run_checked(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; kill its whole process group on timeout (a hung collective
    must fail the test, not hang it). Raises ``AssertionError`` with the output on failure."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout}s: {cmd}\n--- stdout\n{out}\n--- stderr\n{err}"
        ) from None
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {cmd}\n--- stdout\n{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def load_state(out: str | os.PathLike) -> dict[str, Any]:
    """The ``<out>.npz`` a ``train`` run wrote, as ``{leaf name: numpy array}``."""
    import numpy as np

    with np.load(f"{os.fspath(out)}.npz") as f:
        return {k: f[k] for k in f.files}


def load_info(out: str | os.PathLike) -> dict[str, Any]:
    with open(f"{os.fspath(out)}.json", encoding="utf-8") as f:
        return json.load(f)


def assert_same_run(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    """Two train states of the tiny config (``load_state``) are the same training run, up to the
    summation order of an all-reduce.

    - integer leaves (step, optimizer counts, RNG): equal;
    - parameters and EMA: AdamW divides each gradient element by its running RMS, so for an element whose
      gradient is near zero a rounding-level difference can change its update by a sizeable part of the
      learning rate. So: no element further apart than one full update per step, and all but 0.1% of
      the elements within 5% of one update;
    - the optimizer's gradient moments (``opt_state/...``): later gradients are taken at those slightly
      different parameters, so within 0.1% of each array's largest value (a missing or doubled device
      contribution, or other data, would be off by tens of percent).
    """
    import numpy as np

    lr = load_tiny_config().train.learning_rate
    steps = int(want["step"])
    assert got.keys() == want.keys(), what
    far = total = 0
    for name, ref in want.items():
        x = got[name]
        assert x.shape == ref.shape and x.dtype == ref.dtype, f"{what}: {name}"
        if ref.dtype.kind != "f":
            np.testing.assert_array_equal(x, ref, err_msg=f"{what}: {name}")
        elif name.startswith("opt_state/"):
            scale = float(np.max(np.abs(ref)))
            np.testing.assert_allclose(x, ref, rtol=0, atol=1e-3 * scale, err_msg=f"{what}: {name}")
        else:
            np.testing.assert_allclose(x, ref, rtol=0, atol=steps * lr, err_msg=f"{what}: {name}")
            far += int(np.sum(np.abs(x - ref) > 0.05 * lr))
            total += ref.size
    assert far <= 1e-3 * total, f"{what}: {far} of {total} parameter / EMA values differ by > 5% of an update"


# -- in the child process ---------------------------------------------------------------------------------


def _leaf_name(path: Any) -> str:
    import jax

    return jax.tree_util.keystr(path, simple=True, separator="/")


def _local_copy(x: Any) -> Any:
    """This process's value of a global array (its first local replica when replicated)."""
    import numpy as np

    if x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _replicas_agree(x: Any) -> bool:
    """Whether every local shard that holds the same index has the same bits."""
    import numpy as np

    by_index: dict[str, Any] = {}
    for shard in x.addressable_shards:
        key = repr(shard.index)
        data = np.asarray(shard.data)
        if key in by_index and not np.array_equal(by_index[key], data, equal_nan=True):
            return False
        by_index.setdefault(key, data)
    return True


def _train(spec: dict[str, Any]) -> None:
    dist = spec.get("distributed")
    if dist:
        from jaxdiff import cli

        cli.maybe_initialize_distributed(
            "auto",
            coordinator_address=dist["coordinator_address"],
            num_processes=dist["num_processes"],
            process_id=dist["process_id"],
        )
    import jax
    import numpy as np

    from jaxdiff import sharding as mesh_lib
    from jaxdiff.data import make_train_iterator
    from jaxdiff.training.trainer import train_and_evaluate

    for run in spec["runs"]:
        config = load_tiny_config()
        for key, value in run.get("overrides", {}).items():
            section, name = key.split(".")
            config[section][name] = value
        result = train_and_evaluate(config, run["workdir"], stop_at_step=run.get("stop_at_step"))

        leaves = jax.tree_util.tree_flatten_with_path(result.state)[0]
        arrays = {_leaf_name(path): _local_copy(x) for path, x in leaves}

        # The batch as the loop builds it: this process's rows, assembled on the run's mesh.
        mesh = mesh_lib.make_mesh(config.train.fsdp)
        it = make_train_iterator(
            config.data,
            global_batch_size=config.train.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        local = next(it)
        batch = mesh_lib.global_batch({"image": local["image"]}, mesh_lib.batch_sharding(mesh))["image"]
        params = jax.tree_util.tree_flatten_with_path(result.state.params)[0]
        info = {
            "step": result.step,
            "start_step": result.start_step,
            "stopped_early": result.stopped_early,
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "mesh_shape": dict(mesh.shape),
            "batch": {
                "global_shape": list(batch.shape),
                "spec": str(batch.sharding.spec),
                "local_rows": int(local["image"].shape[0]),
                "shard_shapes": [list(s.data.shape) for s in batch.addressable_shards],
                "devices": len(batch.sharding.device_set),
            },
            "params": {
                _leaf_name(path): {
                    "global_shape": list(x.shape),
                    "spec": str(x.sharding.spec),
                    "shard_shape": list(x.addressable_shards[0].data.shape),
                    "fully_replicated": bool(x.sharding.is_fully_replicated),
                }
                for path, x in params
            },
            "replicas_agree": all(_replicas_agree(x) for _, x in leaves),
        }
        np.savez(f"{run['out']}.npz", **arrays)
        np.save(f"{run['out']}.batch.npy", local["image"])
        with open(f"{run['out']}.json", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)


def _cli_with_hang(hang_at_step: int, argv: list[str]) -> None:
    """``train.py argv`` with the commit (rename) of checkpoint ``hang_at_step`` blocked forever."""
    import asyncio
    import runpy

    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if self.get_final().name == str(hang_at_step):
            print(f"{HANG_MARKER} {self.get()}", flush=True)
            while True:  # the checkpoint's files are written, its commit never happens
                await asyncio.sleep(3600)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    sys.argv = [os.path.join(REPO, "train.py"), *argv]
    sys.path.insert(0, REPO)
    runpy.run_path(sys.argv[0], run_name="__main__")


def main(argv: list[str]) -> None:
    command = argv[1]
    if command == "train":
        _train(json.loads(argv[2]))
    elif command == "cli":
        assert argv[2] == "--hang_at_step" and argv[4] == "--", argv
        _cli_with_hang(int(argv[3]), argv[5:])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)
