"""Train a diffusion model: ``python train.py --config configs/digits.py [--workdir DIR] [--config.K=V ...]``.

Everything goes to ``--workdir`` (default ``workdirs/<config name>``): checkpoints, ``config.json``,
``metrics.jsonl``, TensorBoard scalars, sample grids in ``samples/`` and, at the end, a diffusers
pipeline in ``diffusers/``. Re-running the same command resumes from the newest checkpoint. SIGTERM or
Ctrl-C saves a checkpoint and exits with status 0. Bad input prints ``error: <message>`` and exits with
status 2. On several hosts (a TPU pod slice, Slurm) run the same command on every host.
"""

import os

from jaxdiff.execution.allocator import relaunch_under_mimalloc

relaunch_under_mimalloc()  # first: re-runs this command under mimalloc (see jaxdiff/execution/allocator.py)

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdiff import cli  # noqa: E402  (jaxdiff first sets the CPU XLA flags)
from jaxdiff.training.trainer import train_and_evaluate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/digits.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<config file name>).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "jax.distributed.initialize: auto-detect a cluster, always, never.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


def default_workdir(config_path: str) -> str:
    """``workdirs/<config file name without .py and without a ':argument' suffix>``."""
    name = os.path.splitext(os.path.basename(config_path.split(":", 1)[0]))[0]
    return os.path.join("workdirs", name or "run")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    config = cli.load_config_flag(_CONFIG)
    cli.maybe_initialize_distributed(
        _DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    workdir = _WORKDIR.value or default_workdir(cli.config_flag_path())
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    cli.run(main)
