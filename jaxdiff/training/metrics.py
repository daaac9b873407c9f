"""What a run reports: ``metrics.jsonl``, TensorBoard scalars and, when ``train.wandb_project`` is set,
Weights & Biases (the optional ``wandb`` package; ``WANDB_MODE=offline`` works without network), from the main
process only; and the running window of step metrics they summarise.

Scalars are written by section: ``train`` (loss, grad norm, lr, EMA decay, images/s) and ``eval`` (the
sample-quality scores of ``jaxdiff.training.periodic_eval``); ``metrics.jsonl`` names an eval score
``eval/<name>``. Sample grids go to wandb as images.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter

from jaxdiff.errors import UserError
from jaxdiff.workdir import makedirs_in_workdir, open_in_workdir, write_text_atomic

__all__ = ["METRICS_FILE", "MetricsWindow", "MetricsWriter", "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Drop ``metrics.jsonl`` lines past ``last_step`` (written after the checkpoint a resumed run starts
    from). Read and written as the workdir's own file, never through a symlink."""
    if not os.path.lexists(os.path.join(workdir, METRICS_FILE)):
        return
    with open_in_workdir(workdir, METRICS_FILE, "r") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except ValueError:
            continue
    if len(kept) != len(lines):
        write_text_atomic(workdir, METRICS_FILE, "".join(kept))


def _start_wandb(project: str, workdir: str, config: dict[str, Any], start_step: int) -> Any:
    """A wandb run (resumed with the workdir: its id is kept in ``workdir/wandb_run_id``)."""
    try:
        import wandb  # optional: pip install wandb (or ".[wandb]")
    except ImportError:
        raise UserError(
            f"train.wandb_project={project!r} needs the optional wandb package: pip install wandb"
        ) from None
    id_path = os.path.join(workdir, "wandb_run_id")
    run_id = (
        open(id_path, encoding="utf-8").read().strip() if os.path.exists(id_path) else uuid.uuid4().hex[:8]
    )
    with open(id_path, "w", encoding="utf-8") as f:
        f.write(run_id)
    return wandb.init(project=project, id=run_id, resume="allow", dir=workdir, config=config)


class MetricsWriter:
    """``metrics.jsonl`` + TensorBoard (+ wandb) under ``workdir``, written by process 0 only.

    ``wandb_project``: "" (off) or the project name; ``config``: the run config logged with it.
    """

    def __init__(
        self, workdir: str, start_step: int, *, wandb_project: str = "", config: dict[str, Any] | None = None
    ):
        self.enabled = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        truncate_metrics(workdir, start_step)
        self.jsonl = open_in_workdir(workdir, METRICS_FILE, "a")
        self.tb = SummaryWriter(makedirs_in_workdir(workdir, "tensorboard"), purge_step=start_step + 1)
        if wandb_project:
            self.wandb = _start_wandb(wandb_project, workdir, config or {}, start_step)

    def write(self, step: int, scalars: dict[str, float], section: str = "train") -> None:
        if not self.enabled:
            return
        named = scalars if section == "train" else {f"{section}/{k}": v for k, v in scalars.items()}
        self.jsonl.write(json.dumps({"step": step, **named}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(f"{section}/{name}", value, step)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({f"{section}/{k}": v for k, v in scalars.items()}, step=step)

    def image(self, step: int, name: str, path: str) -> None:
        """A PNG the run wrote (a sample grid), for wandb; TensorBoard and the workdir have the file."""
        if self.enabled and self.wandb is not None:
            import wandb  # optional, present when self.wandb is

            self.wandb.log({name: wandb.Image(path)}, step=step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class MetricsWindow:
    """Step metrics since the last log line, and the images/s over them.

    ``add`` takes a finished step's host metrics; ``summary(batch_size)`` the logged scalars (mean loss,
    the last grad norm / lr / EMA decay, images per second); ``restart_clock()`` after work that should
    not count against the speed (grids, checkpoints).
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0, self.steps_timed = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps_timed += 1

    def add(self, metrics: dict[str, float]) -> None:
        self.steps.append(metrics)

    def summary(self, batch_size: int) -> dict[str, float] | None:
        if not self.steps:
            return None
        elapsed = time.perf_counter() - self.t0
        last = self.steps[-1]
        scalars = {
            "loss": float(np.mean([m["loss"] for m in self.steps])),
            "grad_norm": last["grad_norm"],
            "lr": last["lr"],
            "ema_decay": last["ema_decay"],
            "img_per_s": batch_size * self.steps_timed / max(elapsed, 1e-9),
        }
        self.steps.clear()
        self.restart_clock()
        return scalars
