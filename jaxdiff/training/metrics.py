"""What a run reports: ``metrics.jsonl`` and TensorBoard scalars (main process only), and the running
window of step metrics they summarise."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter

__all__ = ["MetricsWindow", "MetricsWriter", "truncate_metrics"]


def truncate_metrics(path: str, last_step: int) -> None:
    """Drop metric lines past ``last_step`` (written after the checkpoint a resumed run starts from)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except ValueError:
            continue
    if len(kept) != len(lines):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)


class MetricsWriter:
    """``metrics.jsonl`` + TensorBoard scalars under ``workdir``, written by process 0 only."""

    def __init__(self, workdir: str, start_step: int):
        self.enabled = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        if not self.enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        truncate_metrics(path, start_step)
        self.jsonl = open(path, "a", encoding="utf-8")
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(f"train/{name}", value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


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
